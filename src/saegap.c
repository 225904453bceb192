/* saegap.c: command dispatch and the per-process set-up shared by all commands. */
#include "saegap.h"

#include "cli.h"
#include "dump.h"
#include "error.h"

#include <stdio.h>
#include <string.h>

int saegap_run(int argc, char **argv, MPI_Comm comm) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    /* MPI calls on this communicator return codes instead of aborting: each is checked. */
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    sg_error_clear();
    Options o;
    int rc = cli_parse(&o, argc, argv);
    sg_set_comm(comm, rc == 0 && o.quiet);
    if (sg_agree(comm, rc) != 0) {
        cli_free(&o);
        return 1;
    }
    int status = 0;
    if (o.help) {
        if (rank == 0) cli_print_help(stdout, o.command);
    } else if (!strcmp(o.command, "dump")) {
        status = dump_command(&o, comm);
    } else {
        sg_errorf(o.command, "this command is not implemented in saegap %s yet (only dump is)", SAEGAP_VERSION);
        sg_agree(comm, -1);
        status = 2;
    }
    cli_free(&o);
    return status;
}
