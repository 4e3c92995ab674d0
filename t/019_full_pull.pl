# A whole-table pull into an empty node: one registry.table_pages()
# request whose pages (rows in primary-key order, then tombstones) are
# applied as they arrive; the puller's keys are left out of
# registry.row_keys during the pull and listed in one pass when it ends
# (by a "registry keys" worker, while the sync worker goes on), however it
# ends:
#
#  - a complete pull: every row and tombstone arrives, the source served
#    exactly one table_pages() and nothing row by row, and every key is
#    listed, under its hash, and usable by bucket_entries();
#  - a pull cut short by a page the puller refuses: the pages before it
#    stay, the error is reported, the keys are listed all the same;
#  - keys left unlisted by a pull a crash cut short (simulated): meanwhile
#    bucket_entries() refuses with 55000, and the sync worker lists them
#    (at start, or at its next round);
#  - a source that dies in the middle of a pull: the rows so far stay,
#    their keys are listed, and the pull is taken up again later.
#
# The puller runs with registry.batch_size = 1 (pages of 10 rows).
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('fp_a', conf => "log_statement = 'all'\n");
my $nb = new_node('fp_b',
	conf => "registry.batch_size = 1\nregistry.antientropy_interval = '1h'\n"
	  . "log_line_prefix = '%m [%p] %b: '\n");
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
create_table([$na], 'chk', 'CREATE TABLE chk (id int PRIMARY KEY, val text)');
create_table([$nb], 'chk',
	q{CREATE TABLE chk (id int PRIMARY KEY, val text CONSTRAINT val_not_bad CHECK (val <> 'bad'))});

sql($na, q{INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 2500) g});
sql($na, q{DELETE FROM kv WHERE id % 100 = 0});
sql($na, q{INSERT INTO chk SELECT g, CASE WHEN g = 300 THEN 'bad' ELSE 'v' || g END
  FROM generate_series(1, 300) g});

# a table's keys on a node: not deferred, and registry.row_keys lists
# every row once, under its key's hash
sub keys_listed
{
	my ($node, $table) = @_;
	return sql($node, qq{SELECT NOT r.khash_deferred
	    AND (SELECT count(*) FROM registry.row_keys k WHERE k.tid = r.tid)
	      = (SELECT count(*) FROM $table)
	    AND (SELECT count(*) FROM registry.row_keys k JOIN $table x ON x.id::text = k.key
	         WHERE k.tid = r.tid AND k.khash = registry.key_hash(x.id))
	      = (SELECT count(*) FROM $table)
	  FROM registry.replicated_tables r WHERE r.relid = '$table'::regclass});
}

my $log_start = -s $na->logfile;
my $b_log_start = -s $nb->logfile;
add_peer($nb, $na);
is(sql($nb, q{SELECT registry.sync_now('fp_a', '120s')}),
	'f', 'sync_now says not converged: one table cannot be pulled');

# the complete pull
is(table_rows($nb, 'kv'), table_rows($na, 'kv'),
	'the empty node has every row, with versions and origins');
is(versions_state($nb, 'kv'), versions_state($na, 'kv'),
	'... and every tombstone');
is(sql($nb, q{SELECT count(*) FROM kv}), '2475', '2475 live rows');
my $log = slurp_file($na->logfile, $log_start);
my @pulls = ($log =~ /registry\.table_pages\(.*?\n.*?parameters: \$1 = 'public\.kv', \$2 = '(\d+)'/g);
is_deeply(\@pulls, ['10'], 'the source served the table in one request of 10-row pages');
unlike($log, qr/registry\.bucket_entries\(.*?\n.*?parameters: \$1 = 'public\.kv'/,
	'no bucket was listed');
unlike($log, qr/registry\.fetch_rows\(.*?\n.*?parameters: \$1 = 'public\.kv'/,
	'no row was fetched one by one');
ok(poll_until(sub { keys_listed($nb, 'kv') eq 't' }),
	'every key is listed in registry.row_keys, not deferred');
like(slurp_file($nb->logfile, $b_log_start),
	qr/registry keys: LOG:  registry: listed the keys of public\.kv in registry\.row_keys after a whole-table pull/,
	'... listed after the pull by a "registry keys" worker, said in the log');
is(sql($nb, q{SELECT jsonb_array_length(registry.decode_message(
	  registry.bucket_entries('public.kv', 1, '{0}', false, NULL, 100000))->'entries')}),
	'2500', 'bucket_entries() lists every row and tombstone through them');

# the pull cut short by its last page (later rounds may fetch the other
# rows of that page one by one, but never the refused one)
my $chk = sql($nb, q{SELECT count(*), min(id), max(id) FROM chk});
my ($n, $lo, $hi) = split /\|/, $chk;
ok($n >= 290 && $n < 300 && $lo == 1 && $hi == $n,
	"the pages before the refused one stayed ($n rows, 1 to $hi)");
like(peer_status($nb, 'fp_a', 'last_error'), qr/val_not_bad/,
	'the refused page is reported with its constraint');
ok(poll_until(sub { keys_listed($nb, 'chk') eq 't' }),
	'the keys are listed after the failed pull');
like(slurp_file($nb->logfile, $b_log_start),
	qr/listed the keys of public\.chk in registry\.row_keys after a whole-table pull/,
	'... also said in the log');

# keys a crash left unlisted (simulated): meanwhile DDL on the table is
# allowed and bucket_entries() refuses (checked inside one transaction,
# which no round of the sync worker can interfere with)
my $drop_khash = q{
UPDATE registry.replicated_tables SET khash_deferred = true WHERE relid = 'kv'::regclass;
DELETE FROM registry.row_keys WHERE tid = (SELECT tid FROM registry.replicated_tables
  WHERE relid = 'kv'::regclass);
};
my ($ret, $out, $err) = $nb->psql('postgres',
	"BEGIN;\n$drop_khash\nALTER TABLE kv ADD COLUMN note text;\n"
	  . q{SELECT registry.bucket_entries('public.kv', 1, '{0}');},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
unlike($err, qr/must keep/, 'other DDL on the table is allowed meanwhile');
like($err, qr/55000: registry table public\.kv is being pulled whole from a peer/,
	'bucket_entries() refuses while the keys are not listed (55000)');
# ... and the sync worker lists them again: at start, or at its next round
sql($nb, $drop_khash);
$nb->restart;
wait_ready($nb);
ok(poll_until(sub { keys_listed($nb, 'kv') eq 't' }),
	'the sync worker lists the keys again');

# a large table pulled whole, whose keys would be most of
# registry.row_keys: the "registry keys" worker writes them to the table
# alone and rebuilds its index (sorted, page by page, as CREATE INDEX
# does) instead of adding them one by one; every table's keys are still
# found through the index
create_table([ $na, $nb ], 'wide', 'CREATE TABLE wide (id int PRIMARY KEY, val text)');
sql($na, q{INSERT INTO wide SELECT g, 'w' || g FROM generate_series(1, 60000) g});
$b_log_start = -s $nb->logfile;
sql($nb, q{SELECT registry.sync_now('fp_a', '120s')});
is(sql($nb, q{SELECT count(*) FROM wide}), '60000', 'a 60000-row table is pulled whole');
ok(poll_until(sub { keys_listed($nb, 'wide') eq 't' }), 'its keys are listed');
like(slurp_file($nb->logfile, $b_log_start),
	qr/registry keys: LOG:  registry: listed the keys of public\.wide in registry\.row_keys after a whole-table pull\n[^\n]*DETAIL:  60000 keys in \d+ ms, index rebuilt\./,
	'... by the "registry keys" worker, rebuilding the index, said in the log');
is(sql($nb, q{SET enable_seqscan = off; SET enable_bitmapscan = off;
	SELECT count(*) FROM registry.row_keys k JOIN registry.replicated_tables r USING (tid)
	WHERE r.relid = 'wide'::regclass AND k.khash BETWEEN -2147483648 AND 2147483647}),
	'60000', "the rebuilt index finds every one of wide's keys");
is(keys_listed($nb, 'kv'), 't', "kv's keys are all still listed");
check_verify([ $na, $nb ], 'after the index rebuild');

# a source that dies in the middle of a pull: the rows applied so far
# stay, the keys are listed at once, and the pull is taken up again (not
# into an empty table: keys listed as rows arrive) when it is back
create_table([ $na, $nb ], 'big', 'CREATE TABLE big (id int PRIMARY KEY, val text)');
sql($na, q{INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 300000) g});
$b_log_start = -s $nb->logfile;
$nb->safe_psql('postgres', q{SELECT registry.sync_now('fp_a', '0')});
ok(poll_until(sub { sql($nb, q{SELECT count(*) > 0 FROM big}) eq 't' }),
	'the pull of a 300000-row table has begun');
$na->stop('immediate');
my $partial = sql($nb, q{SELECT count(*) FROM big});
ok($partial > 0 && $partial < 300000, "the source died in the middle of the pull ($partial rows)");
ok(poll_until(sub { keys_listed($nb, 'big') eq 't' }),
	'the keys are listed once the connection is lost');
like(slurp_file($nb->logfile, $b_log_start),
	qr/listed the keys of public\.big in registry\.row_keys after a whole-table pull/,
	'... said in the log');
$na->start;
wait_ready($na);
ok(poll_until(sub { sql($nb, q{SELECT count(*) FROM big}) eq '300000' }),
	'the pull is taken up again when the source is back');
is(sql($nb, q{SELECT registry.sync_now('fp_a', '120s')}), 'f',
	'a round completes (chk still cannot be pulled)');
is(table_rows($nb, 'big'), table_rows($na, 'big'), 'every row, with versions');
is(keys_listed($nb, 'big'), 't', 'every key is listed');

check_verify([ $na, $nb ], 'after the pulls');

# with no background worker slot free for a "registry keys" worker, the
# sync worker lists the keys itself
my $nc = new_node('fp_c',
	conf => "registry.antientropy_interval = '1h'\nmax_worker_processes = 4\n"
	  . "log_line_prefix = '%m [%p] %b: '\n");
sql($nc, q{SELECT registry.sync_now()});
my $slots = sql($nc, q{SELECT current_setting('max_worker_processes')::int
	  - (SELECT count(*) FROM pg_stat_activity WHERE backend_type NOT IN
	     ('client backend', 'autovacuum launcher', 'checkpointer', 'background writer',
	      'walwriter', 'startup', 'archiver', 'walsender', 'autovacuum worker'))});
is($slots, '0', 'fp_c has no background worker slot free');
create_table([$nc], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
my $c_log_start = -s $nc->logfile;
add_peer($nc, $na);
sql($nc, q{SELECT registry.sync_now('fp_a', '120s')});
is(table_rows($nc, 'kv'), table_rows($na, 'kv'), 'fp_c pulled kv whole');
ok(poll_until(sub { keys_listed($nc, 'kv') eq 't' }), 'its keys are listed');
like(slurp_file($nc->logfile, $c_log_start),
	qr/registry sync: LOG:  registry: listed the keys of public\.kv in registry\.row_keys after a whole-table pull/,
	'... by the sync worker itself');
check_verify([$nc], 'after the pull without a worker slot');
$nc->stop;
$_->stop for ($na, $nb);
done_testing();
