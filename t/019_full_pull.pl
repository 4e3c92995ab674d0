# A whole-table pull into an empty node: asked for bucket by bucket, and a
# bucket that holds more than one page is resumed where its page ended.
#
# The puller runs with registry.batch_size = 1 (pages of 10 rows), so with
# 2500 rows some of the 512 buckets of the pull hold more than a page.
# The source logs its statements, which shows the resumed requests, and
# that no row had to be fetched one by one afterwards (which is how a
# later round would repair rows a broken resume left out).
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('fp_a', conf => "log_statement = 'all'\n");
my $nb = new_node('fp_b',
	conf => "registry.batch_size = 1\nregistry.antientropy_interval = '1h'\n");
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');

sql($na, q{INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 2500) g});
sql($na, q{DELETE FROM kv WHERE id % 100 = 0});
my $log_start = -s $na->logfile;

add_peer($nb, $na);
is(sql($nb, q{SELECT registry.sync_now('fp_a', '120s')}),
	't', 'sync_now with the populated peer says converged');
is(table_rows($nb, 'kv'), table_rows($na, 'kv'),
	'the empty node has every row, with versions and origins');
is(versions_state($nb, 'kv'), versions_state($na, 'kv'),
	'... and every tombstone');
is(sql($nb, q{SELECT count(*) FROM kv}), '2475', '2475 live rows');

my $log = slurp_file($na->logfile, $log_start);
my @pages = ($log =~ /registry\.bucket_entries\(.*?\n.*?parameters: \$1 = 'public\.kv', \$2 = '(\d+)', \$3 = '\{\d+\}', \$4 = 't', \$5 = (NULL|'-?\d+')/g);
my (%gran, $first, $resumed) = ();
for (my $i = 0; $i < @pages; $i += 2)
{
	$gran{ $pages[$i] } = 1;
	if ($pages[ $i + 1 ] eq 'NULL') { $first++ }
	else { $resumed++ }
}
note("whole-table pages: $first first pages, " . ($resumed // 0)
	  . ' resumed, granularity ' . join(',', keys %gran));
ok($first >= 512, 'the pull asked for the table bucket by bucket');
ok(($resumed // 0) > 0, 'buckets holding more than a page were resumed');
unlike($log, qr/registry\.fetch_rows/,
	'no row had to be fetched one by one afterwards');

check_verify([ $na, $nb ], 'after the pull');
$_->stop for ($na, $nb);
done_testing();
