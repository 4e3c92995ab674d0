# registry.pull_compression: whether a node lets its peers compress their
# answers to it.  At the default, auto, answers over a Unix socket come
# uncompressed (compressing them costs both ends CPU and saves no time
# there), and over TCP compressed, to a loopback address too (often the
# local end of a tunnel); with on, the peer compresses as its
# registry.compress_threshold says; with off, never.
#
# Each case pulls a fresh copy of a highly compressible table (40,000 rows
# of 200 repeated characters: about 8.5 MB raw, a few hundred kB
# compressed) whole, and reads what arrived in registry.peer_status's
# bytes_pulled.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $raw_min = 8_000_000;      # 40,000 x 200 bytes of values, at least
my $compressed_max = 2_000_000;

my $src = new_node('pc_src', conf => "listen_addresses = '127.0.0.1'\n");
my $dst = new_node('pc_dst', conf => "registry.antientropy_interval = '1h'\n");
sql($src, q{CREATE TABLE kv (id int PRIMARY KEY, val text)});
sql($src, q{SELECT registry.replicate('kv')});
sql($src, q{INSERT INTO kv SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g});

# Pull kv whole into an empty copy on dst; the bytes that came meanwhile.
sub pull_bytes
{
	my ($peer) = @_;
	sql($dst, q{CREATE TABLE kv (id int PRIMARY KEY, val text)});
	sql($dst, q{SELECT registry.replicate('kv')});
	my $before = peer_status($dst, $peer, 'bytes_pulled');
	is(sql($dst, qq{SELECT registry.sync_now('$peer', '120s')}), 't', "$peer: a round completes");
	is(sql($dst, q{SELECT count(*) FROM kv}), '40000', "$peer: every row arrived");
	my $bytes = peer_status($dst, $peer, 'bytes_pulled') - $before;
	sql($dst, q{SELECT registry.unreplicate('kv')});
	sql($dst, q{DROP TABLE kv});
	return $bytes;
}

# Make the peer's connection new, so that its setup reads the setting.
sub set_pull_compression
{
	my ($value) = @_;
	sql($dst, "ALTER SYSTEM SET registry.pull_compression = '$value'");
	sql($dst, 'SELECT pg_reload_conf()');
	sql($src, q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()});
}

# over the Unix socket, at the default
add_peer($dst, $src);
is(sql($dst, q{SHOW registry.pull_compression}), 'auto', 'the default is auto');
my $b = pull_bytes('pc_src');
ok($b > $raw_min, "auto, Unix socket: answers came uncompressed ($b bytes)");

# on: the peer compresses
set_pull_compression('on');
$b = pull_bytes('pc_src');
ok($b < $compressed_max, "on: answers came compressed ($b bytes)");

# over TCP to a loopback address, at auto: compressed
set_pull_compression('auto');
my $port = $src->port;
sql($dst, q{SELECT registry.remove_peer('pc_src')});
sql($dst, qq{SELECT registry.add_peer('pc_tcp', 'host=127.0.0.1 port=$port dbname=postgres')});
$b = pull_bytes('pc_tcp');
ok($b < $compressed_max, "auto, 127.0.0.1: answers came compressed ($b bytes)");

# off: uncompressed whatever the link
set_pull_compression('off');
$b = pull_bytes('pc_tcp');
ok($b > $raw_min, "off: answers came uncompressed ($b bytes)");

$_->stop for ($src, $dst);
done_testing();
