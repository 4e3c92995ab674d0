# Three nodes in a full mesh.  Inserts, updates and deletes made on any
# node reach every node; then the same 20 keys are written concurrently on
# all three nodes, and after convergence every node holds, for each key,
# the write with the highest (registry_version, registry_origin) among all
# writes made to it (last writer wins).
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use RegistryMesh;

my @nodes = map { new_node($_) } qw(mesh_a mesh_b mesh_c);
my ($na, $nb, $nc) = @nodes;

create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
create_table(\@nodes, 'hot', 'CREATE TABLE hot (id int PRIMARY KEY, val text)');
full_mesh(@nodes);

is(sql($na, 'SELECT count(*) FROM registry.peers'), '2', 'mesh_a has two peers');

# ---------------------------------------------------------------------
# Part 1: inserts, updates and deletes on every node
# ---------------------------------------------------------------------

# expected contents of kv: id => [val, origin]
my %kv;
my %base = (mesh_a => 0, mesh_b => 100, mesh_c => 200);
for my $n (@nodes)
{
	my $o = $base{ $n->name };
	sql($n,
		"INSERT INTO kv SELECT $o + g, '" . $n->name . "-' || g FROM generate_series(1, 30) g");
	$kv{ $o + $_ } = [ $n->name . "-$_", $n->name ] for 1 .. 30;
}

sub kv_expected
{
	return join("\n",
		map { "$_|$kv{$_}[0]|$kv{$_}[1]" } sort { $a <=> $b } keys %kv);
}

sub check_kv
{
	my ($label) = @_;
	my $want = kv_expected();
	for my $n (@nodes)
	{
		is(sql($n, 'SELECT id, val, registry_origin FROM kv ORDER BY id'),
			$want, "$label: kv on " . $n->name . ' has exactly the expected rows');
	}
}

wait_converged(\@nodes, ['kv', 'hot'], 'inserts on every node converge');
check_kv('after inserts');

# each node changes and deletes rows first written by another node
sql($na, q{UPDATE kv SET val = 'a-upd' WHERE id BETWEEN 101 AND 110});
$kv{$_} = [ 'a-upd', 'mesh_a' ] for 101 .. 110;
sql($na, q{DELETE FROM kv WHERE id BETWEEN 221 AND 225});
delete $kv{$_} for 221 .. 225;
sql($nb, q{DELETE FROM kv WHERE id BETWEEN 201 AND 205});
delete $kv{$_} for 201 .. 205;
sql($nb, q{UPDATE kv SET val = 'b-upd' WHERE id IN (1, 2, 3)});
$kv{$_} = [ 'b-upd', 'mesh_b' ] for 1 .. 3;
sql($nc, q{UPDATE kv SET val = 'c-upd' WHERE id BETWEEN 4 AND 5});
$kv{$_} = [ 'c-upd', 'mesh_c' ] for 4 .. 5;
sql($nc, q{DELETE FROM kv WHERE id BETWEEN 6 AND 10 OR id = 130});
delete $kv{$_} for 6 .. 10, 130;
# a key deleted and inserted again, on different nodes
sql($na, q{DELETE FROM kv WHERE id = 11});
wait_converged(\@nodes, ['kv'], 'a delete converges before its re-insert');
sql($nb, q{INSERT INTO kv VALUES (11, 'b-reinserted')});
$kv{11} = [ 'b-reinserted', 'mesh_b' ];
# a new key written on one node, updated on another after it arrived
sql($nc, q{INSERT INTO kv VALUES (500, 'c-new')});
ok( $na->poll_query_until('postgres', 'SELECT count(*) = 1 FROM kv WHERE id = 500'),
	'a row inserted on mesh_c arrives on mesh_a');
sql($na, q{UPDATE kv SET val = 'a-on-c-new' WHERE id = 500});
$kv{500} = [ 'a-on-c-new', 'mesh_a' ];

wait_converged(\@nodes, ['kv', 'hot'],
	'updates and deletes on every node converge');
check_kv('after updates and deletes');
is( sql($nc, q{SELECT count(*) FROM registry.versions('kv') WHERE deleted}),
	'16', 'mesh_c holds the 16 tombstones of the deleted keys');
check_verify(\@nodes, 'part 1');

# ---------------------------------------------------------------------
# Part 2: the same 20 keys written concurrently on all three nodes
# ---------------------------------------------------------------------
sql($na, q{INSERT INTO hot SELECT g, 'init' FROM generate_series(1, 20) g});
wait_converged(\@nodes, ['hot'], 'initial hot rows converge');

srand(20240602);
my $writes_per_session = 150;
my @sessions;
for my $n (@nodes)
{
	for my $s (1 .. 2)
	{
		my $script = '';
		for my $i (1 .. $writes_per_session)
		{
			my $k = 1 + int(rand(20));
			my $v = $n->name . "/s$s/$i";
			$script .=
			  "INSERT INTO hot VALUES ($k, '$v') ON CONFLICT (id) DO UPDATE SET val = excluded.val"
			  . " RETURNING id, val, registry_version, registry_origin;\n";
		}
		my $file = $n->basedir . "/hot_s$s.sql";
		PostgreSQL::Test::Utils::append_to_file($file, $script);
		my %sess = (node => $n, out => '', err => '');
		$sess{h} = IPC::Run::start(
			[
				'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=0',
				'-d', $n->connstr('postgres'), '-f', $file
			],
			'<', \undef, '>', \$sess{out}, '2>', \$sess{err});
		push @sessions, \%sess;
	}
}

my @writes;    # [id, val, version, origin]
for my $sess (@sessions)
{
	my $name = $sess->{node}->name;
	ok($sess->{h}->finish, "concurrent writer on $name exits normally");
	is($sess->{err}, '', "concurrent writer on $name got no error");
	my @lines = grep { /\S/ } split /\n/, $sess->{out};
	is(scalar(@lines), $writes_per_session,
		"concurrent writer on $name: every write returned its version");
	for my $l (@lines)
	{
		my @f = split /\|/, $l;
		push @writes, \@f;
	}
}
is(scalar(grep { $_->[3] ne ($_->[1] =~ m{^([^/]+)/})[0] } @writes),
	0, 'every write is stamped with the origin of the node that made it');

# the winner of each key: highest version, then highest origin (bytewise)
my %win;
for my $w (@writes)
{
	my $cur = $win{ $w->[0] };
	if (  !defined $cur
		|| $w->[2] > $cur->[2]
		|| ($w->[2] == $cur->[2] && $w->[3] gt $cur->[3]))
	{
		$win{ $w->[0] } = $w;
	}
}
# how the writes overlapped (informational: concurrency is best effort)
for my $n (@nodes)
{
	my @v = sort { $a <=> $b } map { $_->[2] } grep { $_->[3] eq $n->name } @writes;
	note($n->name . " wrote versions $v[0] .. $v[-1]; keys won: "
		  . scalar(grep { $_->[3] eq $n->name } values %win));
}
my %writers;
$writers{ $_->[0] }{ $_->[3] } = 1 for @writes;
is(scalar(grep { keys %{ $writers{$_} } == 3 } keys %writers),
	20, 'every one of the 20 keys was written by all three nodes');

wait_converged(\@nodes, ['hot', 'kv'],
	'concurrent writes to the same keys converge');
my $want = join("\n",
	map { join('|', @{ $win{$_} }) } sort { $a <=> $b } keys %win);
for my $n (@nodes)
{
	is( sql($n,
			'SELECT id, val, registry_version, registry_origin FROM hot ORDER BY id'),
		$want,
		'every key on ' . $n->name
		  . ' holds the write with the highest (version, origin)');
}
check_kv('after the concurrent writes');
check_verify(\@nodes, 'part 2');

$_->stop for @nodes;
done_testing();
