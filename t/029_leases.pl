# Leases (issue 14), as the owner sees them, on a two-node mesh l1 <-> l2.
#
# A table made ephemeral with registry.set_lease() keeps a row only while
# the node that wrote it (its registry_origin, the owner) holds a lease on
# it; a client keeps the lease with registry.renew().  This file shows:
#
#  1. set_lease() and renew() refuse what they must, with their SQLSTATEs
#     (55000, 22023, 42501), and set_lease(NULL) makes a table persistent
#     again without touching its rows;
#  2. a row nobody renews expires on its owner and disappears from both
#     nodes, leaving a tombstone of the owner; the owner's change log and
#     notification say "expired" / "lease", the peer sees an ordinary
#     delete; a row renewed every half second outlives two TTLs, and
#     expires once the renewals stop, not before its deadline;
#  3. renewals are free: 20 renewals of 1,000 keys add no change-log
#     entry, (almost) no WAL, and send nothing to the peer;
#  4. renew() on the node that does not own a row takes the row over with
#     exactly one replicated write; later renewals there write nothing;
#  5. renew() returns the keys it could not renew;
#  6. session-bound leases (registry.lease_session): no deadline while the
#     session lives, one TTL after it ends (quit or pg_terminate_backend);
#     renew() of a bound key unbinds it;
#  7. a restart of the owner gives its rows (bound ones included) a full
#     TTL from the restart, after which they expire if nobody renews them;
#  8. a mass expiry of 100,000 rows runs in many small transactions, while
#     a concurrent writer's INSERTs into the same table all commit;
#  9. registry.expiry_cap holds back all but `cap` expiries per window.
#
# Every section ends with the full contents of its tables (keys with their
# registry_origin) checked on both nodes and registry.verify() clean on
# both.  Nothing waits on the clock except through the leases' own
# deadlines (registry.leases) or by polling with a time limit.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use RegistryMesh;
use LeaseTest;

# The mass expiry (section 8) needs room for 100,000 leases, and a change
# log that keeps its 100,000 inserts and 100,000 deletes (keys are short:
# a small registry.max_key_length keeps the ring's shared memory small).
my $conf = q{
registry.expiry_interval = '100ms'
registry.max_leases = 120000
registry.change_log_size = 262144
registry.max_key_length = 64
};
my ($l1, $l2) = map { new_node($_, conf => $conf) } qw(l1 l2);
my @nodes = ($l1, $l2);
full_mesh(@nodes);

# ephemeral tables, each with the same TTL on both nodes
my %ttl = (
	svc  => '2s',       # sections 2 and 6
	long => '1 min',    # sections 1, 3, 4, 5: nothing expires meanwhile
	slow => '20s',      # section 7: long enough to outlive a restart
	mass => '3s',       # section 8
	capt => '2s',       # section 9
	tmp_eph => '2s',    # section 1, persistent again
);
for my $t (sort keys %ttl)
{
	create_table(\@nodes, $t, "CREATE TABLE $t (k text PRIMARY KEY, v text)");
	set_lease_all(\@nodes, $t, $ttl{$t});
}
create_table(\@nodes, 'plain_reg',
	'CREATE TABLE plain_reg (k text PRIMARY KEY, v text)');

# expected contents: table => { key => origin }
my %want = map { $_ => {} } (keys %ttl, 'plain_reg');

for my $n (@nodes)
{
	is( sql($n,
			q{SELECT string_agg(registry._table_name(relid) || '=' || coalesce(lease_ttl::text, 'persistent'), ',' ORDER BY registry._table_name(relid)) FROM registry.replicated_tables}
		),
		'public.capt=00:00:02,public.long=00:01:00,public.mass=00:00:03,public.plain_reg=persistent,public.slow=00:00:20,public.svc=00:00:02,public.tmp_eph=00:00:02',
		'replicated_tables.lease_ttl holds each TTL on ' . $n->name);
}

# ---------------------------------------------------------------------
# 1. what set_lease() and renew() refuse
# ---------------------------------------------------------------------
sql($l1, 'CREATE TABLE unreg (k text PRIMARY KEY)');
my $err = psql_error($l1, q{SELECT registry.set_lease('unreg', '2s')});
like($err, qr/ERROR:  55000: /, 'set_lease() of a table that is not registered: 55000');
like($err, qr/HINT:.*registry\.replicate/,
	'... with a hint to register it with registry.replicate()');

for my $bad ('0', '-1s', '50ms', '2 years')
{
	like(psql_error($l1, qq{SELECT registry.set_lease('svc', '$bad')}),
		qr/ERROR:  22023: /, "set_lease() with ttl '$bad': 22023");
}
is(sql($l1, q{SELECT lease_ttl FROM registry.replicated_tables WHERE relid = 'svc'::regclass}),
	'00:00:02', 'the refused TTLs left the table\'s TTL as it was');

like(psql_error($l1, q{SELECT registry.renew('plain_reg', '{a}')}),
	qr/ERROR:  55000: /, 'renew() on a persistent registry table: 55000');
like(psql_error($l1, q{SELECT registry.renew('unreg', '{a}')}),
	qr/ERROR:  55000: /, 'renew() on a table that is not registered: 55000');

# privileges: renew() needs UPDATE on the table, set_lease() an admin
sql($l1, q{
CREATE ROLE lease_reader;
CREATE ROLE lease_writer;
GRANT SELECT ON long TO lease_reader;
GRANT SELECT, UPDATE ON long TO lease_writer;
INSERT INTO long VALUES ('priv1', 'p');
});
like(psql_error($l1, q{SET ROLE lease_reader; SELECT registry.renew('long', '{priv1}')}),
	qr/ERROR:  42501: /, 'renew() by a role with SELECT but no UPDATE: 42501');
like(psql_error($l1, q{SET ROLE lease_writer; SELECT registry.set_lease('long', '5s')}),
	qr/ERROR:  42501: /, 'set_lease() by a role that is not registry_admin: 42501');
my ($priv_out, $priv_err) = psql_both($l1,
	q{SET ROLE lease_writer; SELECT registry.renew('long', '{priv1}')});
is("$priv_out|$priv_err", '{}|',
	'renew() by a role with SELECT and UPDATE on the table (no admin) renews');
is(sql($l1, q{SELECT renewals FROM registry.leases WHERE table_name = 'public.long' AND key = 'priv1'}),
	'1', '... and the lease counts that renewal');
sql($l1, q{DELETE FROM long WHERE k = 'priv1'});
is(sql($l1, q{SELECT count(*) FROM registry.leases WHERE table_name = 'public.long' AND key = 'priv1'}),
	'0', 'deleting a leased row drops its lease');

# set_lease(NULL): persistent again, the leases dropped, the rows kept
sql($l1, q{INSERT INTO tmp_eph VALUES ('t1', 'x')});
my $tmp_deadline = sql($l1,
	q{SELECT deadline FROM registry.leases WHERE table_name = 'public.tmp_eph' AND key = 't1'});
isnt($tmp_deadline, '', 'a row inserted into an ephemeral table gets a lease');
set_lease_all(\@nodes, 'tmp_eph', undef);
is(sql($l1, q{SELECT count(*) FROM registry.leases WHERE table_name = 'public.tmp_eph'}),
	'0', 'set_lease(NULL) drops this node\'s leases of the table');
is(sql($l1, q{SELECT lease_ttl IS NULL FROM registry.replicated_tables WHERE relid = 'tmp_eph'::regclass}),
	't', 'set_lease(NULL): lease_ttl is NULL again');
like(psql_error($l1, q{SELECT registry.renew('tmp_eph', '{t1}')}),
	qr/ERROR:  55000: /, 'renew() on a table made persistent again: 55000');
# the lease's deadline passes (with some expiry passes after it): the row stays
ok(poll_until(sub { sql($l1, qq{SELECT now() > '$tmp_deadline'::timestamptz + interval '500ms'}) eq 't' }),
	'the dropped lease\'s deadline has passed');
$want{tmp_eph}{t1} = 'l1';
expect_rows(\@nodes, 'tmp_eph', $want{tmp_eph}, 'a persistent-again table keeps its row past the old deadline');
check_verify(\@nodes, 'section 1');

# ---------------------------------------------------------------------
# 2. expiry on the owner; a renewed row stays
# ---------------------------------------------------------------------
my $listener = $l1->background_psql('postgres');
$listener->set_query_timer_restart;
$listener->query_safe('LISTEN registry_change');
my @notes;

my $c0 = counters($l1);
my $seq0_l2 = sql($l2, 'SELECT last_seq FROM registry.node');
sql($l1, q{INSERT INTO svc VALUES ('gone', 'g'), ('kept', 'k')});
is( sql($l1,
		q{SELECT string_agg(key || ':' || owner || ':' || (deadline > now()) || ':' || (session_pid IS NULL), ',' ORDER BY key) FROM registry.leases WHERE table_name = 'public.svc'}
	),
	'gone:l1:true:true,kept:l1:true:true',
	'l1 holds a lease on each row it inserted into svc');

# the client of "kept" renews it every ~0.4 s, until "gone" has
# disappeared from both nodes and "kept"'s lease has lived two TTLs
my $renewer = $l1->background_psql('postgres');
$renewer->set_query_timer_restart;
my ($renewals, $renew_bad, $kept_deadline) = (0, '', '');
my $limit = time() + $PostgreSQL::Test::Utils::timeout_default;
for (;;)
{
	my $r = $renewer->query_safe(q{SELECT registry.renew('svc', '{kept}')});
	$renewals++;
	$renew_bad .= "[$r]" if $r ne '{}';
	$kept_deadline = $renewer->query_safe(
		q{SELECT deadline FROM registry.leases WHERE table_name = 'public.svc' AND key = 'kept'});
	last
	  if sql($l1, q{SELECT count(*) FROM svc WHERE k = 'gone'}) eq '0'
	  && sql($l2, q{SELECT count(*) FROM svc WHERE k = 'gone'}) eq '0'
	  && sql($l1,
		q{SELECT renewed_at > granted_at + interval '4s' FROM registry.leases WHERE table_name = 'public.svc' AND key = 'kept'}
	  ) eq 't';
	last if time() > $limit;
	usleep(400_000);
}
is($renew_bad, '', "each of the $renewals renewals of kept returned '{}'");
$want{svc}{kept} = 'l1';
expect_rows(\@nodes, 'svc', $want{svc},
	'the unrenewed row expired on both nodes, the renewed one (two TTLs) is there');
is( sql($l1,
		q{SELECT string_agg(key || ':' || renewals, ',') FROM registry.leases WHERE table_name = 'public.svc'}),
	"kept:$renewals", 'l1 still leases kept (with every renewal counted), no longer gone');
is(sql($l2, q{SELECT count(*) FROM registry.leases}), '0',
	'l2 holds no lease: it owns none of the rows');
for my $n (@nodes)
{
	is(version_of($n, 'svc', 'gone'), 'l1|true',
		'gone is a tombstone of its owner l1 on ' . $n->name);
}
is(log_of($l1, 'svc', 'gone'), 'insert||l1,delete|expired|l1',
	'l1\'s change log: the insert, then the delete with reason expired');
is(log_of($l2, 'svc', 'gone'), 'insert||l1,delete||l1',
	'l2\'s change log: an ordinary delete from l1 (no reason)');
my $c1 = counters($l1);
is($c1->{leases_expired} - $c0->{leases_expired}, 1,
	'registry.node.leases_expired counts the one expired row');
is($c1->{lease_renewals} - $c0->{lease_renewals}, $renewals,
	'registry.node.lease_renewals counts every renewal');

my ($gone_ins, $gone_del);
ok( wait_notes(
		sub {
			($gone_ins) = grep { note_is($_, 'public.svc', 'gone', 'insert') } @notes;
			($gone_del) = grep { note_is($_, 'public.svc', 'gone', 'delete') } @notes;
			return $gone_ins && $gone_del;
		}),
	'l1 notified the insert and the delete of gone');
is( join('|', map { $_ // '<absent>' } @{$gone_del}{qw(reason expiry origin)}),
	'expired|lease|l1',
	'the delete\'s notification carries "reason": "expired", "expiry": "lease"');
is( join('|', map { exists $gone_ins->{$_} ? 'present' : 'absent' } qw(reason expiry)),
	'absent|absent', 'the insert\'s notification has no reason and no expiry');

# the renewals stop: kept expires, not before its deadline
ok(poll_until(sub { sql($l1, q{SELECT count(*) FROM svc}) eq '0' && sql($l2, q{SELECT count(*) FROM svc}) eq '0' }),
	'once its renewals stop, kept expires on both nodes');
delete $want{svc}{kept};
is( sql($l1,
		qq{SELECT committed_at >= '$kept_deadline'::timestamptz FROM registry.change_log WHERE table_name = 'public.svc' AND key = 'kept' AND op = 'delete'}
	),
	't', 'kept was deleted no earlier than the deadline of its last renewal');
is(counters($l1)->{leases_expired} - $c0->{leases_expired}, 2,
	'leases_expired: 2');
$renewer->quit;
expect_rows(\@nodes, 'svc', $want{svc}, 'svc is empty');
wait_converged(\@nodes, ['svc'], 'section 2 converges');
check_verify(\@nodes, 'section 2');

# ---------------------------------------------------------------------
# 3. renewals write nothing and send nothing
# ---------------------------------------------------------------------
my @rkeys = map { sprintf('r%04d', $_) } 1 .. 1000;
sql($l1, q{INSERT INTO long SELECT 'r' || lpad(g::text, 4, '0'), 'x' FROM generate_series(1, 1000) g});
$want{long}{$_} = 'l1' for @rkeys;
wait_converged(\@nodes, ['long'], 'the 1,000 leased rows reach l2');
# let autovacuum find nothing to do while we measure
sql($l1, 'VACUUM ANALYZE');

my $nrenew = 20;
my $seq_l1 = sql($l1, 'SELECT last_seq FROM registry.node');
my $seq_l2 = sql($l2, 'SELECT last_seq FROM registry.node');
my $ver_l1 = versions_state($l1, 'long');
my ($applied0, $pulled0, $bytes0) = split /\|/,
  peer_status($l2, 'l1', 'rows_applied, rows_pulled, bytes_pulled');
$c0 = counters($l1);
my $lsn0 = sql($l1, 'SELECT pg_current_wal_lsn()');
my $out = sql($l1,
	"\\set keys '{" . join(',', @rkeys) . "}'\n"
	  . join("\n", map { q{SELECT registry.renew('long', :'keys');} } 1 .. $nrenew));
my $wal = sql($l1, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')");
is($out, join("\n", ('{}') x $nrenew), "$nrenew renewals of 1,000 keys each returned '{}'");
cmp_ok($wal, '<', 8192,
	"$nrenew x 1,000 renewals wrote less than 8 kB of WAL on l1 (all activity: $wal bytes)");
is(sql($l1, 'SELECT last_seq FROM registry.node'), $seq_l1,
	'no change-log entry on l1');
is(versions_state($l1, 'long'), $ver_l1, 'no version changed on l1');
is(sql($l2, q{SELECT registry.sync_now('l1', '20s')}), 't', 'l2 completes a sync round with l1');
my ($applied1, $pulled1, $bytes1) = split /\|/,
  peer_status($l2, 'l1', 'rows_applied, rows_pulled, bytes_pulled');
is("$applied1|$pulled1", "$applied0|$pulled0",
	'l2 pulled and applied no row from l1 (rows_applied, rows_pulled unchanged)');
note('l2 bytes_pulled from l1 meanwhile (sync rounds, digests): ' . ($bytes1 - $bytes0));
is(sql($l2, 'SELECT last_seq FROM registry.node'), $seq_l2, 'no change-log entry on l2');
$c1 = counters($l1);
is($c1->{lease_renewals} - $c0->{lease_renewals}, 1000 * $nrenew,
	'registry.node.lease_renewals grew by the number of keys renewed');
is( sql($l1,
		q{SELECT count(*) || ':' || min(renewals) || ':' || max(renewals) FROM registry.leases WHERE table_name = 'public.long' AND key LIKE 'r%'}
	),
	"1000:$nrenew:$nrenew", "each of the 1,000 leases counts $nrenew renewals");
sql($l1, q{DELETE FROM long WHERE k LIKE 'r%'});
delete $want{long}{$_} for @rkeys;
is(sql($l1, q{SELECT count(*) FROM registry.leases WHERE table_name = 'public.long'}),
	'0', 'the deleted rows\' leases are gone');
expect_rows(\@nodes, 'long', $want{long}, 'the 1,000 rows are deleted on both nodes');
check_verify(\@nodes, 'section 3');

# ---------------------------------------------------------------------
# 4. renew() on the node that does not own the row takes it over
# ---------------------------------------------------------------------
sql($l1, q{INSERT INTO long VALUES ('mv', 'm')});
$want{long}{mv} = 'l1';
wait_converged(\@nodes, ['long'], 'mv reaches l2');
my ($v_before) = split /\|/, sql($l1, q{SELECT version FROM registry.versions('long') WHERE key = 'mv'});
$seq_l1 = sql($l1, 'SELECT last_seq FROM registry.node');
$seq_l2 = sql($l2, 'SELECT last_seq FROM registry.node');
my $c0_l2 = counters($l2);
is(sql($l2, q{SELECT registry.renew('long', '{mv}')}), '{}',
	'renew() of l1\'s row on l2 returns {}');
my ($origin_l2, $v_after) = split /\|/, sql($l2, q{SELECT registry_origin, registry_version FROM long WHERE k = 'mv'});
is($origin_l2, 'l2', 'on l2 the row now has registry_origin l2');
cmp_ok($v_after, '>', $v_before, 'with a greater version');
is( sql($l2,
		qq{SELECT string_agg(table_name || ' ' || key || ' ' || op || ' ' || origin || ' ' || version || ' ' || coalesce(reason, '-'), ',') FROM registry.change_log WHERE seq > $seq_l2}
	),
	"public.long mv update l2 $v_after -",
	'l2\'s change log has exactly one new entry: the update of mv by l2');
is( sql($l2,
		q{SELECT owner || ':' || (deadline > now()) FROM registry.leases WHERE table_name = 'public.long' AND key = 'mv'}),
	'l2:true', 'l2 holds the lease of mv');
is(counters($l2)->{lease_ownership_moves} - $c0_l2->{lease_ownership_moves},
	1, 'registry.node.lease_ownership_moves on l2 grew by 1');
$want{long}{mv} = 'l2';
expect_rows(\@nodes, 'long', $want{long}, 'mv belongs to l2 on both nodes');
ok( poll_until(sub {
		sql($l1, q{SELECT count(*) FROM registry.leases WHERE table_name = 'public.long' AND key = 'mv'}) eq '0' }),
	'l1 no longer lists mv among its leases');
is(version_of($l1, 'long', 'mv'), 'l2|false', 'l1 stores l2\'s version of mv');
is(sql($l1, q{SELECT version FROM registry.versions('long') WHERE key = 'mv'}),
	$v_after, '... the very version l2 wrote');
is( sql($l1,
		qq{SELECT string_agg(key || ' ' || op || ' ' || origin || ' ' || version, ',') FROM registry.change_log WHERE seq > $seq_l1}),
	"mv update l2 $v_after", 'l1 received exactly that one write');

# later renewals on l2 write nothing
$seq_l1 = sql($l1, 'SELECT last_seq FROM registry.node');
$seq_l2 = sql($l2, 'SELECT last_seq FROM registry.node');
$c0_l2 = counters($l2);
is( sql($l2, join("\n", map { q{SELECT registry.renew('long', '{mv}');} } 1 .. 5)),
	join("\n", ('{}') x 5),
	'five more renewals of mv on l2 return {}');
is(sql($l2, 'SELECT last_seq FROM registry.node'), $seq_l2, '... and add no change-log entry on l2');
is(sql($l2, q{SELECT registry_version FROM long WHERE k = 'mv'}), $v_after,
	'... and leave the version as it was');
my $c1_l2 = counters($l2);
is( ($c1_l2->{lease_renewals} - $c0_l2->{lease_renewals}) . '|'
	  . ($c1_l2->{lease_ownership_moves} - $c0_l2->{lease_ownership_moves}),
	'5|0', '... counted as 5 renewals, no ownership move');
is(sql($l2, q{SELECT registry.sync_now('l1', '20s')}), 't', 'l2 completes a sync round with l1');
is(sql($l1, q{SELECT registry.sync_now('l2', '20s')}), 't', 'l1 completes a sync round with l2');
is(sql($l1, 'SELECT last_seq FROM registry.node'), $seq_l1, 'l1 received nothing');

# ---------------------------------------------------------------------
# 5. renew() returns the keys it cannot renew
# ---------------------------------------------------------------------
is(sql($l2, q{SELECT registry.renew('long', '{mv,nope1,nope2}')}), '{nope1,nope2}',
	'renew() returns the keys without a row');
is(sql($l1, q{SELECT registry.renew('long', '{r0001}')}), '{r0001}',
	'renew() returns a key deleted here (a tombstone, nothing stashed)');
is(sql($l2, q{SELECT registry.renew('long', '{}')}), '{}', 'renew() of no key returns {}');
is(sql($l2, 'SELECT last_seq FROM registry.node'), $seq_l2, 'none of it wrote anything on l2');
is(sql($l1, 'SELECT last_seq FROM registry.node'), $seq_l1, 'nor on l1');
sql($l2, q{DELETE FROM long WHERE k = 'mv'});
delete $want{long}{mv};
expect_rows(\@nodes, 'long', $want{long}, 'long is empty again');
check_verify(\@nodes, 'sections 4 and 5');

# ---------------------------------------------------------------------
# 6. session-bound leases
# ---------------------------------------------------------------------
$c0 = counters($l1);
my $sess = $l1->background_psql('postgres');
$sess->set_query_timer_restart;
$sess->query_safe('SET registry.lease_session = on');
my $pid = $sess->query_safe('SELECT pg_backend_pid()');
$sess->query_safe(q{INSERT INTO svc VALUES ('sess1', 's')});
$want{svc}{sess1} = 'l1';
is( sql($l1,
		q{SELECT session_pid || ':' || (deadline IS NULL) || ':' || (session_ended_at IS NULL) FROM registry.leases WHERE table_name = 'public.svc' AND key = 'sess1'}
	),
	"$pid:true:true",
	'a row inserted with registry.lease_session on is bound to the session: its pid, no deadline');
ok( poll_until(sub {
		sql($l1, q{SELECT coalesce((SELECT now() > granted_at + interval '2500ms' FROM registry.leases WHERE table_name = 'public.svc' AND key = 'sess1'), true)}) eq 't' }),
	'more than a TTL has passed since the bound lease was granted');
is( sql($l1,
		q{SELECT session_pid || ':' || (deadline IS NULL) FROM registry.leases WHERE table_name = 'public.svc' AND key = 'sess1'}),
	"$pid:true", 'while its session lives, the bound lease still has no deadline');
expect_rows(\@nodes, 'svc', $want{svc}, 'the bound row is there on both nodes after more than a TTL');

# the session quits: the row expires one TTL later
my $t_quit = sql($l1, 'SELECT clock_timestamp()');
$sess->quit;
ok( poll_until(sub {
		sql($l1, q{SELECT count(*) FROM svc WHERE k = 'sess1'}) eq '0'
		  && sql($l2, q{SELECT count(*) FROM svc WHERE k = 'sess1'}) eq '0' }),
	'after its session quit, the bound row disappears from both nodes');
delete $want{svc}{sess1};
is( sql($l1,
		qq{SELECT op || ':' || reason || ':' || (committed_at >= '$t_quit'::timestamptz + interval '2s' - interval '50ms') FROM registry.change_log WHERE table_name = 'public.svc' AND key = 'sess1' AND op = 'delete'}
	),
	'delete:expired:true',
	'the delete has reason expired, one TTL after the session ended');
my $sess_del;
ok(wait_notes(sub { ($sess_del) = grep { note_is($_, 'public.svc', 'sess1', 'delete') } @notes; $sess_del }),
	'l1 notified the delete of sess1');
is(join('|', map { $_ // '<absent>' } @{$sess_del}{qw(reason expiry)}), 'expired|session',
	'its notification: "reason": "expired", "expiry": "session"');
is(counters($l1)->{sessions_expired} - $c0->{sessions_expired}, 1,
	'registry.node.sessions_expired counts it');

# a bound session terminated from another one
my $sess2 = $l1->background_psql('postgres');
$sess2->set_query_timer_restart;
$sess2->query_safe('SET registry.lease_session = on');
my $pid2 = $sess2->query_safe('SELECT pg_backend_pid()');
$sess2->query_safe(q{INSERT INTO svc VALUES ('sess2', 's')});
is( sql($l1, q{SELECT session_pid FROM registry.leases WHERE table_name = 'public.svc' AND key = 'sess2'}),
	$pid2, 'sess2 is bound to the second session');
is(sql($l1, "SELECT pg_terminate_backend($pid2)"), 't', 'the second session is terminated');
my $ended;
ok( poll_until(sub {
		$ended = sql($l1,
			q{SELECT (deadline - session_ended_at)::text FROM registry.leases WHERE table_name = 'public.svc' AND key = 'sess2' AND session_ended_at IS NOT NULL});
		$ended ne '' || sql($l1, q{SELECT count(*) FROM svc WHERE k = 'sess2'}) eq '0' }),
	'the lease sees its session end');
is($ended, '00:00:02', 'the ended session\'s lease runs one TTL from the end')
  if $ended ne '';
ok( poll_until(sub {
		sql($l1, q{SELECT count(*) FROM svc WHERE k = 'sess2'}) eq '0'
		  && sql($l2, q{SELECT count(*) FROM svc WHERE k = 'sess2'}) eq '0' }),
	'the terminated session\'s row disappears from both nodes');
eval { $sess2->quit };
is(log_of($l1, 'svc', 'sess2'), 'insert||l1,delete|expired|l1',
	'sess2: inserted, then deleted with reason expired');
is(counters($l1)->{sessions_expired} - $c0->{sessions_expired}, 2,
	'registry.node.sessions_expired: 2');

# renew() of a bound key unbinds it: it then expires while its session lives
my $sess3 = $l1->background_psql('postgres');
$sess3->set_query_timer_restart;
$sess3->query_safe('SET registry.lease_session = on');
my $pid3 = $sess3->query_safe('SELECT pg_backend_pid()');
$sess3->query_safe(q{INSERT INTO svc VALUES ('sess3', 's')});
is(sql($l1, q{SELECT registry.renew('svc', '{sess3}')}), '{}', 'renew() of a bound key');
is( sql($l1,
		q{SELECT (session_pid IS NULL) || ':' || (deadline > now()) FROM registry.leases WHERE table_name = 'public.svc' AND key = 'sess3'}),
	'true:true', '... unbinds it: no session, a deadline');
ok( poll_until(sub {
		sql($l1, q{SELECT count(*) FROM svc WHERE k = 'sess3'}) eq '0'
		  && sql($l2, q{SELECT count(*) FROM svc WHERE k = 'sess3'}) eq '0' }),
	'the unbound row expires while the session that wrote it lives');
is($sess3->query_safe('SELECT pg_backend_pid()'), $pid3, '(that session is still there)');
$sess3->quit;
my $sess3_del;
ok(wait_notes(sub { ($sess3_del) = grep { note_is($_, 'public.svc', 'sess3', 'delete') } @notes; $sess3_del }),
	'l1 notified the delete of sess3');
is(join('|', map { $_ // '<absent>' } @{$sess3_del}{qw(reason expiry)}), 'expired|lease',
	'its notification: "expiry": "lease"');
my $c6 = counters($l1);
is( ($c6->{sessions_expired} - $c0->{sessions_expired}) . '|'
	  . ($c6->{leases_expired} - $c0->{leases_expired}),
	'2|1', 'sessions_expired 2, leases_expired 1');
$listener->quit;
expect_rows(\@nodes, 'svc', $want{svc}, 'svc is empty after the sessions');
wait_converged(\@nodes, ['svc'], 'section 6 converges');
check_verify(\@nodes, 'section 6');

# ---------------------------------------------------------------------
# 7. an owner restart gives its rows a full TTL
# ---------------------------------------------------------------------
my @skeys = map { "s$_" } 1 .. 5;
sql($l1, q{INSERT INTO slow SELECT 's' || g, 'x' FROM generate_series(1, 5) g});
my $sb = $l1->background_psql('postgres');
$sb->query_safe('SET registry.lease_session = on');
$sb->query_safe(q{INSERT INTO slow VALUES ('sb', 'bound')});
$want{slow}{$_} = 'l1' for @skeys, 'sb';
expect_rows(\@nodes, 'slow', $want{slow}, 'six leased rows in slow (one session-bound)');
my $old_deadline = sql($l1,
	q{SELECT max(deadline) FROM registry.leases WHERE table_name = 'public.slow'});

$l1->restart;
wait_ready($l1);
eval { $sb->quit };    # its backend ended with the restart
my $started = sql($l1, 'SELECT started_at FROM registry.node');
$c0 = counters($l1);
ok( poll_until(sub {
		sql($l1, q{SELECT count(*) FROM registry.leases WHERE table_name = 'public.slow'}) eq '6' }),
	'after the restart l1 leases its six rows again (adoption)');
is( sql($l1,
		qq{SELECT count(*) FILTER (WHERE session_pid IS NULL AND deadline >= '$started'::timestamptz + interval '20s' - interval '100ms' AND deadline > '$old_deadline'::timestamptz) FROM registry.leases WHERE table_name = 'public.slow'}
	),
	'6',
	'each adopted lease is an ordinary one with a full TTL from the restart (the bound one too)');
expect_rows(\@nodes, 'slow', $want{slow}, 'the rows survived the restart on both nodes');
my $deadlines = sql($l1,
	q{SELECT string_agg(format('(%L, %L::timestamptz)', key, deadline), ',') FROM registry.leases WHERE table_name = 'public.slow'});

ok( poll_until(sub {
		sql($l1, q{SELECT count(*) FROM slow}) eq '0' && sql($l2, q{SELECT count(*) FROM slow}) eq '0' }),
	'not renewed, the adopted rows expire on both nodes');
delete $want{slow}{$_} for @skeys, 'sb';
is( sql($l1,
		qq{SELECT count(*) FILTER (WHERE c.committed_at >= d.deadline AND c.reason = 'expired') || '/' || count(*) FROM registry.change_log c JOIN (VALUES $deadlines) d(key, deadline) USING (key) WHERE c.table_name = 'public.slow' AND c.op = 'delete'}
	),
	'6/6', 'each was deleted (reason expired) no earlier than its adopted deadline');
is(counters($l1)->{leases_expired} - $c0->{leases_expired}, 6,
	'registry.node.leases_expired counts the six');
wait_converged(\@nodes, ['slow'], 'section 7 converges');
check_verify(\@nodes, 'section 7');

# ---------------------------------------------------------------------
# 8. mass expiry, with a concurrent writer
# ---------------------------------------------------------------------
$c0 = counters($l1);
my $trunc0 = sql($l1, 'SELECT change_log_truncations FROM registry.node');
sql($l1, q{INSERT INTO mass SELECT 'm' || lpad(g::text, 6, '0'), 'x' FROM generate_series(1, 100000) g});
ok(poll_until(sub { sql($l1, q{SELECT count(*) < 100000 FROM mass WHERE k LIKE 'm%'}) eq 't' }),
	'the expiry of the 100,000 rows has begun');

# a writer inserts other keys, one row per statement and transaction, in
# batches of 20, while the expiry runs (and a little beyond, up to 300)
my $w = $l1->background_psql('postgres', on_error_stop => 0);
$w->set_query_timer_restart;
my ($written, $returned, $overlap, $werr) = (0, 0, 0, 0);
my $remaining = sql($l1, q{SELECT count(*) FROM mass WHERE k LIKE 'm%'});
while ($written < 400)
{
	my $batch = join("\n",
		map { sprintf(q{INSERT INTO mass VALUES ('w%04d', 'w') RETURNING k;}, $written + $_) }
		  1 .. 20);
	my ($o, $e) = $w->query($batch);
	$werr = 1 if $e;
	$returned += scalar(grep { /^w\d{4}$/ } split /\n/, $o);
	$overlap += 20 if $remaining > 0;
	$written += 20;
	$remaining = sql($l1, q{SELECT count(*) FROM mass WHERE k LIKE 'm%'});
	last if $remaining == 0 && $written >= 300;
}
$w->quit;
is($werr, 0, "none of the writer's $written INSERTs failed");
is($returned, $written, "each of the writer's $written INSERTs returned its row");
cmp_ok($overlap, '>', 0, "$overlap of them ran while the expiry was running");
is( sql($l1,
		q{SELECT count(*) FROM registry.change_log WHERE table_name = 'public.mass' AND op = 'insert' AND key LIKE 'w%'}),
	$written, 'the change log has every one of the writer\'s inserts: all committed');

ok( poll_until(sub {
		sql($l1, q{SELECT count(*) FROM mass}) eq '0' && sql($l2, q{SELECT count(*) FROM mass}) eq '0' }),
	'every row of mass (the writer\'s too) expired on both nodes');
wait_converged(\@nodes, ['mass'], 'mass converges');
expect_rows(\@nodes, 'mass', $want{mass}, 'mass is empty on both nodes');
is(sql($l1, 'SELECT change_log_truncations FROM registry.node'), $trunc0,
	'the change log kept every change of the mass expiry');
my ($ndel, $nxact, $biggest) = split /\|/, sql($l1, q{
SELECT count(*), count(DISTINCT committed_at), coalesce(max(n), 0)
FROM (SELECT committed_at, count(*) OVER (PARTITION BY committed_at) AS n
      FROM registry.change_log
      WHERE table_name = 'public.mass' AND op = 'delete' AND reason = 'expired'
        AND key LIKE 'm%') d});
is($ndel, 100000, 'the change log has 100,000 expiry deletes');
cmp_ok($nxact, '>=', 100, "they were committed in $nxact transactions (at least 100)");
cmp_ok($biggest, '<=', 1000, "at most 1,000 per transaction ($biggest)");
is(counters($l1)->{leases_expired} - $c0->{leases_expired}, 100000 + $written,
	'registry.node.leases_expired counts all of them');
is(sql($l1, q{SELECT count(*) FROM registry.leases WHERE table_name = 'public.mass'}),
	'0', 'no lease of mass is left');
check_verify(\@nodes, 'section 8');

# ---------------------------------------------------------------------
# 9. the self-preservation cap
# ---------------------------------------------------------------------
sql($l1, q{
ALTER SYSTEM SET registry.expiry_cap = 50;
ALTER SYSTEM SET registry.expiry_window = '1h';
SELECT pg_reload_conf();
});
ok($l1->poll_query_until('postgres', q{SELECT current_setting('registry.expiry_cap') = '50'}),
	'registry.expiry_cap is 50 on l1');
$c0 = counters($l1);
sql($l1, q{INSERT INTO capt SELECT 'c' || lpad(g::text, 3, '0'), 'x' FROM generate_series(1, 200) g});
ok( poll_until(sub {
		counters($l1)->{expiry_held_cap} > $c0->{expiry_held_cap}
		  && sql($l1, q{SELECT count(*) FROM capt}) eq '150' }),
	'200 leases ran out at once: 50 rows expired, the rest is held');
# ten more expiry passes: nothing more goes in this window
usleep(1_000_000);
my @kept = split /\n/, sql($l1, q{SELECT k FROM capt ORDER BY k});
is(scalar(@kept), 150, 'still exactly 150 rows after further expiry passes');
$want{capt}{$_} = 'l1' for @kept;
expect_rows(\@nodes, 'capt', $want{capt}, 'the same 150 rows on both nodes');
is( sql($l1,
		q{SELECT count(*) FILTER (WHERE deadline <= now() + interval '10 s') || '/' || count(*) FROM registry.leases WHERE table_name = 'public.capt'}),
	'150/150', 'the 150 held rows keep their leases, due again within 10 s (the cap\'s recheck)');
my $c9 = counters($l1);
cmp_ok($c9->{expiry_held_cap} - $c0->{expiry_held_cap}, '>', 0,
	'registry.node.expiry_held_cap counts the held rows');
is($c9->{expiry_held_cap} - $c0->{expiry_held_cap}, 150,
	'... once each in this window: 150');
is($c9->{leases_expired} - $c0->{leases_expired}, 50, 'leases_expired: 50');

sql($l1, q{
ALTER SYSTEM RESET registry.expiry_cap;
ALTER SYSTEM RESET registry.expiry_window;
SELECT pg_reload_conf();
});
ok( poll_until(sub {
		sql($l1, q{SELECT count(*) FROM capt}) eq '0' && sql($l2, q{SELECT count(*) FROM capt}) eq '0' }),
	'without the cap the 150 held rows expire on both nodes');
%{ $want{capt} } = ();
wait_converged(\@nodes, ['capt'], 'section 9 converges');
check_verify(\@nodes, 'section 9');

# ---------------------------------------------------------------------
# the end: every table, on both nodes
# ---------------------------------------------------------------------
wait_converged(\@nodes, [ sort keys %want ], 'all tables converge at the end');
expect_rows(\@nodes, $_, $want{$_}, "at the end: $_") for sort keys %want;
check_verify(\@nodes, 'at the end');

$_->stop for @nodes;
done_testing();

# ---------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------

# registry.set_lease() on every node (undef: persistent again)
sub set_lease_all
{
	my ($nodes, $table, $ttl) = @_;
	my $arg = defined $ttl ? quote_literal($ttl) : 'NULL';
	sql($_, "SELECT registry.set_lease('$table', $arg)") for @$nodes;
}

# "origin|deleted" of one key in registry.versions()
sub version_of
{
	my ($node, $table, $key) = @_;
	return sql($node,
		"SELECT origin || '|' || deleted FROM registry.versions('$table') WHERE key = "
		  . quote_literal($key));
}

sub pump_notes
{
	push @notes, read_notifications($listener);
}

sub wait_notes
{
	my ($cond) = @_;
	return poll_until(sub { pump_notes(); return $cond->(); });
}

