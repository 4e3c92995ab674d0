# Peers that break the wire protocol's expectations, and types a peer may
# not choose (the security review of issue 15):
#
#  A. A fake server that answers every request with a COPY (CopyOutResponse):
#     libpq then returns a COPY result on every PQgetResult() and never the
#     end of the request.  registry.join() against it fails at once with
#     08P01 (it spun, uninterruptibly, before); the sync worker pulling from
#     it records the protocol violation in registry.peer_status and goes on
#     serving its other peer, whose rows arrive (it spun forever before).
#  B. registry.join() takes a column type only when superusers own it and
#     what it is made of: a domain of the same name that a non-superuser
#     owns here (its CHECK is that role's code, run whenever a row is
#     written) makes the table 'not created', and the others are created.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time usleep);
use RegistryMesh;

# ---------------------------------------------------------------------
# a fake server: protocol 3, trust; every request answered with a COPY
# ---------------------------------------------------------------------
my $fake_port = PostgreSQL::Test::Cluster::get_free_port();
my $listener = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => $fake_port,
	Listen => 16,
	ReuseAddr => 1) or die "listen: $!";
my $fake_pid = fork();
die "fork: $!" unless defined $fake_pid;
if ($fake_pid == 0)
{
	fake_server($listener);
	exit 0;
}
close $listener;
END { kill 'KILL', $fake_pid if $fake_pid; }

sub msg { my ($type, $body) = @_; return $type . pack('N', 4 + length $body) . $body; }

sub fake_server
{
	my ($l) = @_;
	my $sel = IO::Select->new($l);
	my %buf;
	my %started;
	for (;;)
	{
		for my $s ($sel->can_read(1))
		{
			if ($s == $l)
			{
				my $c = $l->accept or next;
				$sel->add($c);
				$buf{$c} = '';
				$started{$c} = 0;
				next;
			}
			my $n = sysread($s, my $data, 65536);
			if (!$n)
			{
				$sel->remove($s);
				close $s;
				next;
			}
			$buf{$s} .= $data;
			for (;;)
			{
				if (!$started{$s})
				{
					last if length $buf{$s} < 8;
					my ($len, $code) = unpack('NN', $buf{$s});
					last if length $buf{$s} < $len;
					substr($buf{$s}, 0, $len) = '';
					if ($code == 80877103 || $code == 80877104)
					{
						syswrite($s, 'N');    # no SSL, no GSS
						next;
					}
					$started{$s} = 1;
					syswrite($s,
						    msg('R', pack('N', 0))
						  . msg('S', "server_version\x0015.0\x00")
						  . msg('S', "client_encoding\x00UTF8\x00")
						  . msg('S', "standard_conforming_strings\x00on\x00")
						  . msg('S', "integer_datetimes\x00on\x00")
						  . msg('K', pack('NN', 1, 1))
						  . msg('Z', 'I'));
					next;
				}
				last if length $buf{$s} < 5;
				my ($type, $len) = unpack('aN', $buf{$s});
				last if length $buf{$s} < 1 + $len;
				substr($buf{$s}, 0, 1 + $len) = '';
				# a simple query, or the Sync that ends an extended one
				if ($type eq 'P') { syswrite($s, msg('1', '')); }
				elsif ($type eq 'B') { syswrite($s, msg('2', '')); }
				elsif ($type eq 'Q' || $type eq 'S')
				{
					syswrite($s, msg('H', pack('cn', 0, 0)));
				}
				elsif ($type eq 'X') { $sel->remove($s); close $s; last; }
			}
		}
	}
}

my $fake_conn = "host=127.0.0.1 port=$fake_port dbname=postgres user=fake sslmode=disable";

# ---------------------------------------------------------------------
# A. join and the sync worker against the fake
# ---------------------------------------------------------------------
my $n1 = new_node('hw1');
my $n2 = new_node('hw2');
create_table([ $n1, $n2 ], 'kv', 'CREATE TABLE kv (k int PRIMARY KEY, v text)');

my $t0 = time();
my ($rc, $out, $err) = $n1->psql('postgres',
	"\\set VERBOSITY verbose\nSET statement_timeout = '60s';\nSELECT * FROM registry.join('fake', '$fake_conn')",
	timeout => 90);
my $took = time() - $t0;
like($err, qr/08P01/, 'join against a peer that answers with a COPY: 08P01');
like($err, qr/The peer answered with PGRES_COPY_OUT/, '... the detail says what came');
cmp_ok($took, '<', 30, "... at once, not spinning ($took s)");
is(sql($n1, q{SELECT count(*) FROM registry.peers}), '0', '... and nothing is left behind');

# the sync worker: the fake and a real peer
sql($n1, "SELECT registry.add_peer('fake', '$fake_conn')");
add_peer($n1, $n2);
ok( poll_until(sub {
			sql($n1, q{SELECT last_error FROM registry.peer_status WHERE peer = 'fake'})
			  =~ /protocol violation: the peer answered a request with PGRES_COPY_OUT/;
		}),
	'the sync worker records the COPY as a protocol violation');
sql($n2, q{INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 50) g});
ok(poll_until(sub { sql($n1, q{SELECT count(*) FROM kv}) eq '50' }),
	'... and goes on pulling from its other peer: its 50 rows arrive');
ok( poll_until(sub {
			sql($n1, q{SELECT errors > 1 FROM registry.peer_status WHERE peer = 'fake'}) eq 't'
		}),
	'... tries the fake again later (and fails again), not stuck in one request');

# ---------------------------------------------------------------------
# B. a type a non-superuser owns here is not taken on the peer's word
# ---------------------------------------------------------------------
sql($n2, q{
CREATE DOMAIN public.dd AS text CHECK (VALUE <> '');
CREATE TABLE dt (k int PRIMARY KEY, v public.dd);
SELECT registry.replicate('dt');
CREATE TABLE ok_t (k int PRIMARY KEY, v text);
SELECT registry.replicate('ok_t');
});
my $n3 = new_node('hw3');
sql($n3, q{
CREATE ROLE lowu;
GRANT CREATE ON SCHEMA public TO lowu;
CREATE SCHEMA lows AUTHORIZATION lowu;
SET ROLE lowu;
CREATE FUNCTION lows.evil(text) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN RAISE NOTICE 'lowu''s code ran as %', current_user; RETURN true; END $$;
CREATE DOMAIN public.dd AS text CHECK (lows.evil(VALUE));
RESET ROLE;
});
my $res = sql($n3,
	q{SELECT table_name || '|' || action || '|' || coalesce(detail, '') FROM registry.join('hw2', }
	  . quote_literal($n2->connstr('postgres')) . q{) ORDER BY 1});
like($res, qr/^public\.dt\|not created\|.*type public\.dd is not taken on a peer's word/m,
	'a column type owned by a non-superuser here: the table is not created');
like($res, qr/^public\.ok_t\|created\|/m, '... the other tables are');
like($res, qr/^public\.kv\|created\|/m, '... (kv too)');
is(sql($n3, q{SELECT count(*) FROM pg_class WHERE relname = 'dt'}), '0', '... no table dt here');

$n1->stop;
$n2->stop;
$n3->stop;
done_testing();
