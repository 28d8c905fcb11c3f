/* pldr perplexity: work in progress. */
#include "config.h"

#include <stdio.h>

#include "cli.h"

int cmd_perplexity(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fputs("pldr perplexity: not implemented yet\n", stderr);
    return EXIT_RUNTIME;
}
