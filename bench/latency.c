/*
 * latency.c - convergence latency between two nodes, for bench/replication.
 *
 *   latency CONNINFO_A CONNINFO_B COUNT
 *
 * COUNT times: update the single row of table lat (k = 1) on A with a new
 * value, then query B until it shows that value.  Prints the time from
 * sending the UPDATE to seeing it on B, in microseconds, one per line.
 * The same program measures registry and built-in logical replication.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "libpq-fe.h"

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static PGconn *
connect_or_die(const char *conninfo)
{
	PGconn	   *c = PQconnectdb(conninfo);

	if (PQstatus(c) != CONNECTION_OK)
	{
		fprintf(stderr, "latency: %s", PQerrorMessage(c));
		exit(1);
	}
	return c;
}

int
main(int argc, char **argv)
{
	PGconn	   *a,
			   *b;
	int			count,
				i;
	unsigned	seed = (unsigned) time(NULL);

	if (argc != 4)
	{
		fprintf(stderr, "usage: latency CONNINFO_A CONNINFO_B COUNT\n");
		return 2;
	}
	a = connect_or_die(argv[1]);
	b = connect_or_die(argv[2]);
	count = atoi(argv[3]);

	for (i = 0; i < count; i++)
	{
		char		val[32];
		const char *params[1] = {val};
		PGresult   *r;
		double		t0,
					t1;
		long		polls = 0;

		snprintf(val, sizeof(val), "%u-%d", seed, i);
		t0 = now_us();
		r = PQexecParams(a, "UPDATE lat SET v = $1 WHERE k = 1", 1, NULL,
						 params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(r), "1") != 0)
		{
			fprintf(stderr, "latency: update failed: %s", PQerrorMessage(a));
			return 1;
		}
		PQclear(r);
		for (;;)
		{
			bool		seen;

			r = PQexec(b, "SELECT v FROM lat WHERE k = 1");
			if (PQresultStatus(r) != PGRES_TUPLES_OK)
			{
				fprintf(stderr, "latency: read failed: %s", PQerrorMessage(b));
				return 1;
			}
			seen = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), val) == 0;
			PQclear(r);
			polls++;
			if (seen)
				break;
			if (polls > 2000000)
			{
				fprintf(stderr, "latency: value never arrived\n");
				return 1;
			}
		}
		t1 = now_us();
		printf("%.0f\n", t1 - t0);
	}
	PQfinish(a);
	PQfinish(b);
	return 0;
}
