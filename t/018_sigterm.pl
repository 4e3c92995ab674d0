# A peer that accepts connections and never answers, with connect and
# query timeouts of ten minutes: the sync worker, stuck connecting to it,
# still exits promptly (and quietly) on SIGTERM (pg_terminate_backend), is
# started again by the launcher, and a fast shutdown completes while the
# peer hangs.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(usleep time);
use RegistryMesh;

# the fake peer: a child process that accepts every connection, keeps it
# open, and never sends a byte; it notes each connection in $accepts
my $accepts = PostgreSQL::Test::Utils::tempdir() . '/accepts';
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $listener = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => $port,
	Proto => 'tcp',
	Listen => 16,
	ReuseAddr => 1) or die "cannot listen on 127.0.0.1:$port: $!";
my $fake_pid = fork();
die "fork: $!" unless defined $fake_pid;
if ($fake_pid == 0)
{
	alarm(900);    # never outlive the test by much
	my @held;
	while (1)
	{
		my $c = $listener->accept;
		next unless $c;
		push @held, $c;
		open(my $fh, '>>', $accepts) or die;
		print $fh "connection\n";
		close($fh);
	}
	POSIX::_exit(0);
}
close($listener);
END
{
	local $?;
	if ($fake_pid)
	{
		kill 'KILL', $fake_pid;
		waitpid($fake_pid, 0);
	}
}

my $node = new_node('sig', conf => q{
registry.connect_timeout = '10min'
registry.query_timeout = '10min'
});
is( sql($node, q{SELECT current_setting('registry.connect_timeout') || ' ' || current_setting('registry.query_timeout')}),
	'10min 10min', 'connect and query timeouts are ten minutes');
create_table([$node], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
sql($node, "SELECT registry.add_peer('fake', 'host=127.0.0.1 port=$port dbname=postgres connect_timeout=0')");

ok( $node->poll_query_until('postgres',
		q{SELECT state = 'connecting' FROM registry.peer_status WHERE peer = 'fake'}),
	'the sync worker is connecting to the silent peer');
ok(poll_until(sub { -s $accepts }), 'the silent peer accepted its connection');

my $pid = sql($node,
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'registry sync'});
like($pid, qr/^\d+$/, "the sync worker runs (pid $pid)");
is(sql($node, "SELECT pg_terminate_backend($pid)"), 't', 'SIGTERM sent to the sync worker');

# far less than the ten-minute timeouts
my $limit = 60;
my $deadline = time() + $limit;
my $gone = 0;
while (time() < $deadline)
{
	if (sql($node, "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '0'
		&& !kill(0, $pid))
	{
		$gone = 1;
		last;
	}
	usleep(100_000);
}
ok($gone, "the sync worker exited on SIGTERM within $limit s, while the peer hangs");
# a worker that was only waiting leaves quietly: a clean stop is not an error
ok(!$node->log_contains(qr/FATAL:.*registry sync/),
	'the sync worker left without a FATAL line in the server log');

ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'registry sync' AND pid <> $pid"),
	'the launcher starts a new sync worker');
ok( $node->poll_query_until('postgres',
		q{SELECT state = 'connecting' FROM registry.peer_status WHERE peer = 'fake'}),
	'the new sync worker is connecting to the silent peer again');
sub accepted
{
	open(my $fh, '<', $accepts) or return 0;
	my @l = <$fh>;
	return scalar(@l);
}
ok(poll_until(sub { accepted() >= 2 }), 'the silent peer accepted the new worker\'s connection');

# a fast shutdown must not wait for the silent peer (pg_ctl waits 60 s)
ok($node->stop('fast', fail_ok => 1), 'a fast shutdown completes while the peer still hangs');
ok(kill(0, $fake_pid), 'the silent peer was still there');

done_testing();
