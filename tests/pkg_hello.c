/* A program built only from pkg-config's flags: it must compile, link and run. */
#include <libvdisk/libvdisk.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
    if (strcmp(vd_version(), VD_VERSION_STRING) != 0) {
        fprintf(stderr, "header %s, library %s\n", VD_VERSION_STRING, vd_version());
        return 1;
    }
    const char *format = NULL;
    if (vd_probe("/nonexistent/libvdisk-pkg-test", &format) != VD_ENOENT) {
        fprintf(stderr, "vd_probe of a missing file did not fail with VD_ENOENT\n");
        return 1;
    }
    printf("libvdisk %s\n", vd_version());
    return 0;
}
