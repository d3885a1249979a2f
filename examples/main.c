/*
 * vdisk: a qemu-img compatible command line front end to libvdisk.
 * This file dispatches to the commands and prints the global help and
 * version; each command lives in its own cmd_*.c.
 */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Adding a command: write cmd_NAME.c and list it here. */
static const struct cli_command *const commands[] = {
    &cmd_create,
    &cmd_info,
    &cmd_convert,
    &cmd_map,
    &cmd_check,
    &cmd_resize,
    &cmd_snapshot,
    &cmd_rebase,
    &cmd_commit,
    &cmd_compare,
    &cmd_measure,
    &cmd_dd,
    &cmd_bench,
    &cmd_amend,
    &cmd_bitmap,
};

#define COMMAND_COUNT (sizeof commands / sizeof commands[0])

static const struct cli_command *find_command(const char *name)
{
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        if (strcmp(commands[i]->name, name) == 0)
            return commands[i];
    return NULL;
}

static int print_version(void)
{
    printf(CLI_NAME " version %s (libvdisk %s)\n", VD_VERSION_STRING, vd_version());
    return EXIT_SUCCESS;
}

static int print_help(void)
{
    printf("usage: " CLI_NAME " [-h | -V] COMMAND [command options]\n"
           "Create, inspect, convert, check and resize virtual disk images, manage their\n"
           "snapshots and backing chains, with libvdisk.\n\n"
           "  -h, --help       display this help and exit\n"
           "  -V, --version    output version information and exit\n\n"
           "Commands:\n");
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        printf("  %-9s %s\n", commands[i]->name, commands[i]->summary);
    printf("\nCommand syntax:\n");
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        printf("  %s %s\n", commands[i]->name, commands[i]->synopsis);
    printf("\nSupported formats:");
    for (size_t i = 0; vd_format_name(i); i++)
        printf(" %s", vd_format_name(i));
    printf("\n\nRun '" CLI_NAME " help COMMAND' or '" CLI_NAME " COMMAND --help' for the "
           "options of a command.\nExit status: 0 on success, 1 on any error (check: see "
           "'" CLI_NAME " help check').\n");
    return EXIT_SUCCESS;
}

static int command_not_found(const char *name)
{
    return cli_usage_error("Command not found: %s", name);
}

/* 'vdisk help [COMMAND]' */
static int run_help(int argc, char **argv)
{
    if (argc < 2)
        return print_help();
    if (argc > 2)
        return cli_usage_error("Unexpected argument: %s", argv[2]);
    const struct cli_command *cmd = find_command(argv[1]);
    return cmd ? cli_command_help(cmd) : command_not_found(argv[1]);
}

int main(int argc, char **argv)
{
    static const struct option global_options[] = {
        CLI_OPTION_HELP,
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    opterr = 0; /* options errors are reported as qemu-img words them */
    int opt;
    /* '+': stop at the command name; its options are the command's */
    while ((opt = getopt_long(argc, argv, "+:hV", global_options, NULL)) != -1) {
        switch (opt) {
        case 'h':
            return print_help();
        case 'V':
            return print_version();
        default:
            return cli_bad_option(opt, argv);
        }
    }
    if (optind >= argc)
        return cli_usage_error("Not enough arguments");

    const char *name = argv[optind];
    int cmd_argc = argc - optind;
    char **cmd_argv = argv + optind;
    optind = 0; /* a full getopt reset for the command's own parsing */
    if (strcmp(name, "help") == 0)
        return run_help(cmd_argc, cmd_argv);
    const struct cli_command *cmd = find_command(name);
    if (!cmd)
        return command_not_found(name);
    int status;
    return cli_take_global_options(cmd, &cmd_argc, cmd_argv, &status)
               ? cmd->run(cmd_argc, cmd_argv)
               : status;
}
