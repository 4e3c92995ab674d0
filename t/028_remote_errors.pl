# Errors a peer answers with reach this node's log whole: the peer's
# SQLSTATE as the log entry's code, its message, and its detail and hint
# on lines of their own, with a context naming the peer and the request
# (as postgres_fdw reports a remote error); registry.peer_status keeps
# saying it on one line, as before.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;
use FakePeer;

$ENV{LC_ALL} = 'C.UTF-8';

my $fake = new_fake_peer('fake');
# every log line carries its SQLSTATE
my $node = new_node('rerr', conf => "log_line_prefix = '%m [%p] %e %q%a '\n");
create_table([$node], 'rt', 'CREATE TABLE rt (k text PRIMARY KEY, v text)');

# ---- a request that is not about one table: changes_since ----

# The fake's changes_since does $body (after recording the call).
sub fake_changes_do
{
	my ($body) = @_;
	fake_sql($fake, qq{
CREATE OR REPLACE FUNCTION registry.fake_changes(after_seq bigint, max_changes int,
    with_rows boolean, epoch bigint, exclude_origin text, wait_ms int,
    max_bytes int, nargs int) RETURNS bytea
LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM registry.fake_record('changes_since', '');
    $body
END \$\$});
}

fake_changes_do(q{RAISE EXCEPTION 'fake peer refuses the changes'
        USING ERRCODE = '22023', DETAIL = 'The detail of the refusal.',
              HINT = 'The hint of the refusal.';});

my $log_start = -s $node->logfile;
sql($node, "SELECT registry.add_peer('fake', " . quote_literal($fake->connstr('postgres')) . ')');

ok( poll_until(sub {
			slurp_file($node->logfile, $log_start) =~ /registry: peer "fake": fake peer refuses/;
		}),
	'the refusal is logged');
my $log = slurp_file($node->logfile, $log_start);
like($log, qr/ 22023 LOG:  registry: peer "fake": fake peer refuses the changes\n/,
	'the log entry has the peer\'s SQLSTATE and its primary message');
like($log, qr/\n[^\n]* 22023 DETAIL:  The detail of the refusal\.\n/,
	'the peer\'s detail is a DETAIL line of its own');
like($log, qr/\n[^\n]* 22023 HINT:  The hint of the refusal\.\n/,
	'the peer\'s hint is a HINT line of its own');
like($log, qr/\n[^\n]* 22023 CONTEXT:  [^\n]*PL\/pgSQL function registry\.fake_changes[^\n]*\n\s*answer of peer "fake" to registry\.changes_since\(\)\n/,
	'the context: the peer\'s own, then the peer and the request');
like(peer_status($node, 'fake', 'last_error'),
	qr/^ERROR: fake peer refuses the changes; DETAIL: The detail of the refusal\. HINT: The hint of the refusal\. CONTEXT: PL\/pgSQL function /,
	'peer_status says it on one line, as libpq words it');

# ---- a request about one table: digest ----

fake_changes_do(q{RETURN registry.fake_changes_answer(after_seq);});
fake_sql($fake, q{
CREATE OR REPLACE FUNCTION registry.digest(tbl text, nbuckets int, lo int, width int, n int)
RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN
    PERFORM registry.fake_record('digest', 'refused');
    RAISE EXCEPTION 'fake peer has no table %', tbl
        USING ERRCODE = '42P01', DETAIL = 'Not here.', HINT = 'Register it.';
END $$});

$log_start = -s $node->logfile;
sql($node, "SELECT registry.sync_now('fake', '5s')");
ok( poll_until(sub {
			slurp_file($node->logfile, $log_start) =~ /fake peer has no table/;
		}),
	'the digest refusal is logged');
$log = slurp_file($node->logfile, $log_start);
like($log,
	qr/ 42P01 LOG:  registry: peer "fake": public\.rt: fake peer has no table public\.rt\n[^\n]* 42P01 DETAIL:  Not here\.\n[^\n]* 42P01 HINT:  Register it\.\n[^\n]* 42P01 CONTEXT:  [^\n]*\n\s*answer of peer "fake" to registry\.digest\(\) for public\.rt\n/,
	'the table\'s error: SQLSTATE, message, detail, hint and context naming peer, request and table');
like(peer_status($node, 'fake', 'last_error'),
	qr/^public\.rt: ERROR: fake peer has no table public\.rt; DETAIL: Not here\. HINT: Register it\. CONTEXT: /,
	'peer_status says it on one line, after the table\'s name');

$node->stop;
$fake->stop;
done_testing();
