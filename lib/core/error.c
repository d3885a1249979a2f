/* Error codes, their names and descriptions, and the thread-local message. */
#include "core/internal.h"

#include <stdarg.h>
#include <stdio.h>

#define VD_MESSAGE_MAX 1024

static _Thread_local char thread_message[VD_MESSAGE_MAX];

#define VD_ERROR_TEXT_CASE_(name, value, text) case VD_##name: return text;
#define VD_ERROR_NAME_CASE_(name, value, text) case VD_##name: return "VD_" #name;

const char *vd_strerror(int err)
{
    switch (err) {
    VD_ERROR_TABLE(VD_ERROR_TEXT_CASE_)
    default: return "unknown error";
    }
}

const char *vd_errname(int err)
{
    switch (err) {
    VD_ERROR_TABLE(VD_ERROR_NAME_CASE_)
    default: return "VD_E?";
    }
}

#define VD_ERROR_KNOWN_CASE_(name, value, text) case VD_##name: return true;

bool vd_error_known(int err)
{
    switch (err) {
    VD_ERROR_TABLE(VD_ERROR_KNOWN_CASE_)
    default: return false;
    }
}

const char *vd_errmsg(void)
{
    return thread_message;
}

int vd_err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(thread_message, sizeof thread_message, fmt, ap);
    va_end(ap);
    return code;
}

void vd_err_clear(void)
{
    thread_message[0] = '\0';
}
