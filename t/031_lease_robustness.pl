# Leases (issue 14) under the findings of the security review: the expiry
# must not be stalled, stopped or starved by what clients do.  A two-node
# mesh r1 <-> r2 (sections A and B), a node r3 alone with
# registry.max_leases = 16 (sections C and D) and a node r4 alone (E, F).
#
#  A. A client holding LOCK TABLE on an ephemeral table does not stall the
#     maintenance worker: while the lock is held and a row of that table is
#     past its deadline, a row of another ephemeral table expires on time
#     (gone on both nodes) and a listener receives the notification of an
#     INSERT into a persistent table, each within 10 s (the lock is held
#     throughout, checked in pg_locks).  Once the lock goes, the locked
#     table's row expires too.
#  B. A row that cannot be deleted (a foreign key still refers to it) stops
#     neither the other rows of its table nor other tables: of e1, e2, e3
#     (e2 referenced), e1 and e3 expire, e2 stays with its deadline moved
#     10 s on and its key and error in the log, and the rows of a table
#     registered after it (expired in the same passes) expire.  Once the
#     reference is deleted, e2 expires.
#  C. The leases of r3 (16 entries): (1) an adoption that ran out of room
#     resumes when room frees: of 40 rows only 16 are leased after a
#     restart; when the leased rows are deleted, the others get leases,
#     16 and then the last 8; (2) session-bound leases take at most half
#     of the entries: a session with registry.lease_session inserts 16
#     rows, at most 8 are bound and the others are ordinary leases, and a
#     row another session writes to another table still gets a lease and
#     expires.
#  D. registry.lease_stash holds whole rows of any ephemeral table: a
#     member of registry_admin cannot read it (42501).
#  E. (r4, a node alone) An adoption pending while a client holds one
#     ephemeral table locked
#     keeps neither the other tables' expiry nor the rest of the pass: a
#     row of another table expires within 10 s, the failed adoption is
#     logged.
#  F. (r4) When a batch fails (a trigger refuses one row) and is retried row by
#     row, a row renewed while the batch ran is not deleted before its new
#     deadline.
#  G. (r5, a node alone, expiry_interval 3 s) A table made ephemeral on
#     an idle node expires its rows at the next pass, not at the idle
#     pass 10 s later.
#  H. (r6, a node alone) Leases that one table's backoff or the cap holds
#     back do not fill the expiry's batches: with 1,100 expired rows of a
#     table a client holds locked (its expiry fails and backs off), and
#     then with 1,100 expired rows of a table the cap (50) holds back, a
#     row of another table, written before them and due after them,
#     expires.  (Kept due, the held
#     leases were collected first at every pass, 1,000 at a time, and the
#     other table's row waited for as long as the lock or the window.)
#
# Nothing waits on the clock except by polling with a time limit: the
# default one, or 10 s where the point is that something happens promptly
# while a lock is held, or 60 s where the code retries every 10 s.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use RegistryMesh;
use LeaseTest;

my $conf = q{
registry.expiry_interval = '100ms'
};
my ($r1, $r2) = map { new_node($_, conf => $conf) } qw(r1 r2);
my @nodes = ($r1, $r2);
full_mesh(@nodes);

# ephemeral tables; side is registered after fkp (section B: the expiry
# takes the tables in the order of their registration)
my @eph = (
	[ lk   => '2s' ],    # A: the locked table
	[ free => '1s' ],    # A: another ephemeral table
	[ fkp  => '1s' ],    # B: rows referenced by a foreign key
	[ side => '1s' ],    # B: another ephemeral table
);
for my $e (@eph)
{
	my ($t, $ttl) = @$e;
	create_table(\@nodes, $t, "CREATE TABLE $t (k text PRIMARY KEY, v text)");
	sql($_, "SELECT registry.set_lease('$t', '$ttl')") for @nodes;
}
create_table(\@nodes, 'pers', 'CREATE TABLE pers (k text PRIMARY KEY, v text)');

# expected contents: table => { key => origin }
my %want = map { $_ => {} } (map { $_->[0] } @eph), 'pers';

my $listener = $r1->background_psql('postgres');
$listener->set_query_timer_restart;
$listener->query_safe('LISTEN registry_change');
my @notes;

# ---------------------------------------------------------------------
# A. a client's LOCK TABLE does not stall the maintenance worker
# ---------------------------------------------------------------------
my $locker = $r1->background_psql('postgres');
$locker->set_query_timer_restart;
my $locker_pid = $locker->query_safe('SELECT pg_backend_pid()');
# the row gets its lease (2 s) at the INSERT's commit, the lock follows
$locker->query_safe(
	q{INSERT INTO lk VALUES ('lk1', 'x'); BEGIN; LOCK TABLE lk IN SHARE MODE;});
is( sql($r1,
		qq{SELECT granted FROM pg_locks WHERE pid = $locker_pid AND relation = 'lk'::regclass AND mode = 'ShareLock'}),
	't', 'a client holds LOCK TABLE lk IN SHARE MODE on r1');
is( sql($r1,
		q{SELECT (deadline > clock_timestamp())::text FROM registry.leases WHERE table_name = 'public.lk' AND key = 'lk1'}),
	'true', 'lk1\'s lease runs out while the lock is held');
ok( poll_until(sub {
		sql($r1,
			q{SELECT count(*) FROM registry.leases WHERE table_name = 'public.lk' AND key = 'lk1' AND deadline < clock_timestamp() - interval '500ms'}
		) eq '1' }),
	'lk1 is past its deadline (by half a second) under the lock');

# meanwhile: a row of another ephemeral table, a row of a persistent one
my $t_ins = time();
sql($r1, q{INSERT INTO free VALUES ('fr1', 'x')});
sql($r1, q{INSERT INTO pers VALUES ('p1', 'x')});
my $p1_note;
ok( poll_for(10,
		sub {
			pump_notes();
			($p1_note) = grep { note_is($_, 'public.pers', 'p1', 'insert') } @notes;
			return $p1_note;
		}),
	'the listener receives the notification of the INSERT into pers within 10 s');
note(sprintf('notification after %.1f s', time() - $t_ins)) if $p1_note;
my $fr1_gone = poll_for(10,
	sub {
		sql($r1, q{SELECT count(*) FROM free}) eq '0'
		  && sql($r2, q{SELECT count(*) FROM free}) eq '0';
	});
ok($fr1_gone,
	'fr1 (TTL 1 s, another ephemeral table) is gone from both nodes within 10 s');
note(sprintf('fr1 gone after %.1f s', time() - $t_ins)) if $fr1_gone;
is(log_of($r1, 'free', 'fr1'), 'insert||r1,delete|expired|r1',
	'r1\'s change log: fr1 inserted, then deleted with reason expired');
my $fr1_del;
ok( poll_for(10,
		sub {
			pump_notes();
			($fr1_del) = grep { note_is($_, 'public.free', 'fr1', 'delete') } @notes;
			return $fr1_del;
		}),
	'the listener receives the notification of fr1\'s expiry');
is( sql($r1,
		qq{SELECT granted FROM pg_locks WHERE pid = $locker_pid AND relation = 'lk'::regclass AND mode = 'ShareLock'}),
	't', 'all the while the client held its lock on lk');
$want{lk}{lk1} = 'r1';
$want{pers}{p1} = 'r1';
rows_are(\@nodes, 'lk', $want{lk}, 'under the lock, lk1 is still there');
rows_are(\@nodes, 'free', $want{free}, 'free is empty');
like(slurp_file($r1->logfile),
	qr/registry: lease expiry failed: canceling statement due to lock timeout/,
	'r1\'s log: the expiry of lk gave up on the lock (lock_timeout)');

$locker->query_safe('COMMIT');
$locker->quit;
delete $want{lk}{lk1};
expect_rows(\@nodes, 'lk', $want{lk}, 'once the lock is released, lk1 expires from both nodes');
is(log_of($r1, 'lk', 'lk1'), 'insert||r1,delete|expired|r1',
	'lk1: inserted, then deleted with reason expired');
expect_rows(\@nodes, 'pers', $want{pers}, 'pers keeps its row');
$listener->quit;
wait_converged(\@nodes, [qw(lk free pers)], 'section A converges');
check_verify(\@nodes, 'section A');

# ---------------------------------------------------------------------
# B. a row that cannot go stops no other row and no other table
# ---------------------------------------------------------------------
sql($r1, q{CREATE TABLE fkc (k text REFERENCES fkp)});
my $c0 = counters($r1);
sql($r1, q{
BEGIN;
INSERT INTO fkp VALUES ('e1', 'x'), ('e2', 'x'), ('e3', 'x');
INSERT INTO fkc VALUES ('e2');
INSERT INTO side VALUES ('s1', 'x'), ('s2', 'x');
COMMIT;
});
$want{fkp}{e2} = 'r1';
my $b_done = poll_until(sub {
	rows_of($r1, 'fkp') eq 'e2|r1' && rows_of($r2, 'fkp') eq 'e2|r1'
	  && rows_of($r1, 'side') eq '' && rows_of($r2, 'side') eq '' });
ok($b_done, 'e1, e3, s1, s2 expire, e2 (referenced by fkc) stays');
rows_are(\@nodes, 'fkp', $want{fkp}, 'e1 and e3 expired, e2 stayed');
rows_are(\@nodes, 'side', $want{side}, 'the rows of another ephemeral table expired meanwhile');
is(join(',', map { log_of($r1, $_->[0], $_->[1]) } [ fkp => 'e1' ], [ fkp => 'e3' ]),
	'insert||r1,delete|expired|r1,insert||r1,delete|expired|r1',
	'r1\'s change log: e1 and e3 deleted with reason expired');
my ($moved) = sql($r1,
	q{SELECT extract(epoch FROM deadline - (granted_at + interval '1s')) FROM registry.leases WHERE table_name = 'public.fkp' AND key = 'e2'});
$moved = -1 if !defined $moved || $moved eq '';
cmp_ok($moved, '>=', 10, "e2's lease: its deadline moved 10 s on ($moved s)");
cmp_ok($moved, '<', 15, '... once: by one retry interval, not two (less than 15 s)');
my $log = slurp_file($r1->logfile);
like($log, qr/registry: could not expire key "e2" of \S*fkp: .*violates foreign key constraint/,
	'r1\'s log: e2 could not be expired, with its key and the error');
unlike($log, qr/could not expire key "e[13]"/, '... and nothing of the kind for e1 or e3');
is(counters($r1)->{leases_expired} - $c0->{leases_expired}, 4,
	'registry.node.leases_expired counts e1, e3, s1 and s2');

sql($r1, q{DELETE FROM fkc});
delete $want{fkp}{e2};
expect_rows(\@nodes, 'fkp', $want{fkp}, 'once nothing refers to it, e2 expires from both nodes');
is(log_of($r1, 'fkp', 'e2'), 'insert||r1,delete|expired|r1',
	'e2: inserted, then deleted with reason expired');
is(sql($r1, q{SELECT count(*) FROM registry.leases WHERE table_name IN ('public.fkp', 'public.side')}),
	'0', 'no lease of fkp or side is left');
wait_converged(\@nodes, [qw(fkp side)], 'section B converges');
check_verify(\@nodes, 'section B');

wait_converged(\@nodes, [ sort keys %want ], 'all tables converge at the end of A and B');
expect_rows(\@nodes, $_, $want{$_}, "after A and B: $_") for sort keys %want;
$_->stop for @nodes;

# ---------------------------------------------------------------------
# C. a node with room for 16 leases
# ---------------------------------------------------------------------
my $r3 = new_node('r3', conf => $conf . "registry.max_leases = 16\n");
for my $e ([ cap40 => '5min' ], [ bnd => '5min' ], [ oth => '2s' ])
{
	my ($t, $ttl) = @$e;
	create_table([$r3], $t, "CREATE TABLE $t (k text PRIMARY KEY, v text)");
	sql($r3, "SELECT registry.set_lease('$t', '$ttl')");
}
is(counters($r3)->{lease_capacity}, 16, 'r3 has room for 16 leases');

# C1. adoption resumes when room frees
sql($r3, q{INSERT INTO cap40 SELECT 'c' || lpad(g::text, 2, '0'), 'x' FROM generate_series(1, 40) g});
$r3->restart;
wait_ready($r3);
ok(poll_for(60, sub { counters($r3)->{leases_used} == 16 }),
	'after a restart, adoption fills the 16 entries');
my $c3 = counters($r3);
is("$c3->{leases_used}|$c3->{lease_evictions}", '16|0',
	'leases_used 16, no eviction (adoption never evicts)');
is( sql($r3,
		q{SELECT count(*) || ':' || count(*) FILTER (WHERE session_pid IS NULL AND deadline > now()) FROM registry.leases WHERE table_name = 'public.cap40'}),
	'16:16', 'registry.leases lists 16 ordinary leases of cap40');
is(sql($r3, q{SELECT count(*) FROM cap40}), '40', 'cap40 keeps its 40 rows');

# room frees: the leased rows are deleted; the others get leases
is( sql($r3,
		q{DELETE FROM cap40 WHERE k IN (SELECT key FROM registry.leases WHERE table_name = 'public.cap40');
SELECT count(*) || '|' || (SELECT leases_used FROM registry.node) FROM cap40}),
	'24|0', 'the 16 leased rows deleted: 24 rows left, no lease used');
ok(poll_for(60, sub { counters($r3)->{leases_used} == 16 }),
	'the adoption resumes: 16 leases again');
is( sql($r3,
		q{SELECT count(*) FROM registry.leases l JOIN cap40 c ON c.k = l.key WHERE l.table_name = 'public.cap40' AND l.session_pid IS NULL AND l.deadline > now()}),
	'16', '... on 16 of the 24 rows that had none');

sql($r3, q{DELETE FROM cap40 WHERE k IN (SELECT key FROM registry.leases WHERE table_name = 'public.cap40')});
ok( poll_for(60,
		sub {
			sql($r3,
				q{SELECT count(*) FROM cap40 c WHERE NOT EXISTS (SELECT FROM registry.leases l WHERE l.table_name = 'public.cap40' AND l.key = c.k)}
			) eq '0';
		}),
	'room frees again: the last rows get leases too');
is( sql($r3, q{SELECT count(*) FROM cap40}) . '|' . counters($r3)->{leases_used},
	'8|8', 'the last 8 rows, each with a lease');
sql($r3, q{DELETE FROM cap40});
is(counters($r3)->{leases_used}, 0, 'cap40 emptied: no lease used');

# C2. session-bound leases take at most half of the entries
my $bs = $r3->background_psql('postgres');
$bs->set_query_timer_restart;
$bs->query_safe('SET registry.lease_session = on');
my $bpid = $bs->query_safe('SELECT pg_backend_pid()');
$bs->query_safe(
	q{INSERT INTO bnd SELECT 'b' || lpad(g::text, 2, '0'), 'x' FROM generate_series(1, 16) g});
my ($nbound, $nordinary, $nother) = split /\|/, sql($r3, qq{
SELECT count(*) FILTER (WHERE session_pid = $bpid AND deadline IS NULL) || '|' ||
       count(*) FILTER (WHERE session_pid IS NULL AND deadline IS NOT NULL) || '|' ||
       count(*) FILTER (WHERE NOT ((session_pid = $bpid AND deadline IS NULL) OR (session_pid IS NULL AND deadline IS NOT NULL)))
FROM registry.leases WHERE table_name = 'public.bnd'});
cmp_ok($nbound, '<=', 8,
	"of 16 rows a bound session inserted, at most 8 are bound ($nbound)");
is($nordinary + $nbound, 16, "... the others ($nordinary) have ordinary leases");
is($nother, 0, '... and no lease is anything else');
is(counters($r3)->{leases_used}, 16, 'the 16 entries are used');

my $ev0 = counters($r3)->{lease_evictions};
is( sql($r3,
		q{INSERT INTO oth VALUES ('o1', 'x');
SELECT count(*) || ':' || coalesce(bool_and(session_pid IS NULL AND deadline > now()), false) FROM registry.leases WHERE table_name = 'public.oth' AND key = 'o1'}
	),
	'1:true', 'another session\'s row in another table still gets a lease');
is(counters($r3)->{lease_evictions} - $ev0, 1, '... by evicting an ordinary lease');
ok(poll_until(sub { sql($r3, q{SELECT count(*) FROM oth}) eq '0' }),
	'... and expires');
is(log_of($r3, 'oth', 'o1'), 'insert||r3,delete|expired|r3',
	'o1: inserted, then deleted with reason expired');
is( sql($r3,
		qq{SELECT count(*) FROM registry.leases WHERE table_name = 'public.bnd' AND session_pid = $bpid AND deadline IS NULL}),
	$nbound, 'the bound leases are all still there (never evicted)');
is(sql($r3, q{SELECT count(*) FROM bnd}), '16', 'bnd keeps its 16 rows');
is($bs->query_safe('SELECT pg_backend_pid()'), $bpid, '(the bound session is still there)');
$bs->quit;

# ---------------------------------------------------------------------
# D. registry_admin cannot read registry.lease_stash
# ---------------------------------------------------------------------
sql($r3, q{CREATE ROLE stash_reader IN ROLE registry_admin});
like(psql_error($r3, q{SET ROLE stash_reader; SELECT * FROM registry.lease_stash}),
	qr/ERROR:  42501: permission denied for table lease_stash/,
	'a member of registry_admin reading registry.lease_stash: 42501');
my ($adm_out, $adm_err) = psql_both($r3,
	q{SET ROLE stash_reader; SELECT count(*) > 0 FROM registry.leases WHERE table_name = 'public.bnd'});
is("$adm_out|$adm_err", 't|', '(the same role reads registry.leases)');
is(sql($r3, q{SELECT count(*) FROM registry.lease_stash}), '0',
	'a superuser reads registry.lease_stash');

# ---------------------------------------------------------------------
# E. a pending adoption does not let one locked table stop the pass
# ---------------------------------------------------------------------
# (a node of their own: r3's full lease table throttles its adoptions)
my $r4 = new_node('r4', conf => $conf);
for my $t (qw(ax ey ez))
{
	create_table([$r4], $t, "CREATE TABLE $t (k text PRIMARY KEY, v text)");
}
sql($r4, q{SELECT registry.set_lease('ax', '1 min'); SELECT registry.set_lease('ey', '1s')});
my $ax_locker = $r4->background_psql('postgres');
$ax_locker->query_safe(q{BEGIN; LOCK TABLE ax IN ACCESS EXCLUSIVE MODE;});
# making ez ephemeral asks for an adoption, which must read ax too
sql($r4, q{SELECT registry.set_lease('ez', '1 min'); INSERT INTO ey VALUES ('y1', 'x')});
my $t0 = time();
my $gone = 0;
while (time() - $t0 < 10)
{
	if (sql($r4, q{SELECT count(*) FROM ey}) eq '0') { $gone = 1; last }
	usleep(100_000);
}
ok($gone, 'ax locked by a client while an adoption is pending: ey\'s row expires within 10 s');
ok( poll_until(sub {
		slurp_file($r4->logfile) =~
		  /registry: lease adoption failed: canceling statement due to lock timeout/ }),
	'the adoption of the locked table is logged as failed (lock timeout)');
is(sql($r4, q{SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'ax' AND l.mode = 'AccessExclusiveLock' AND l.granted}),
	'1', '(the lock was held throughout)');
$ax_locker->query_safe('COMMIT');
$ax_locker->quit;

# ---------------------------------------------------------------------
# F. the row-by-row retry of a failed batch spares a row renewed meanwhile
# ---------------------------------------------------------------------
create_table([$r4], 'fz', "CREATE TABLE fz (k text PRIMARY KEY, v text)");
sql($r4, q{
CREATE FUNCTION fz_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.k = 'slow' THEN PERFORM pg_sleep(3); END IF;
  IF OLD.k = 'bad' THEN RAISE EXCEPTION 'bad cannot go'; END IF;
  RETURN OLD;
END $$;
CREATE TRIGGER fz_del BEFORE DELETE ON fz FOR EACH ROW EXECUTE FUNCTION fz_del();
SELECT registry.set_lease('fz', '10s');
INSERT INTO fz VALUES ('slow', 'x'), ('bad', 'x');
});
ok( poll_until(sub {
		sql($r4,
			q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'registry maintenance%' AND wait_event = 'PgSleep'}
		) eq '1' }),
	'the expiry batch of slow and bad is in slow\'s delete trigger');
is(sql($r4, q{SELECT registry.renew('fz', '{slow}')}), '{}',
	'renew() of slow while the batch runs answers renewed');
my $renewed = sql($r4, q{SELECT deadline FROM registry.leases WHERE table_name = 'public.fz' AND key = 'slow'});
ok(poll_until(sub { sql($r4, q{SELECT count(*) FROM fz WHERE k = 'slow'}) eq '0' }),
	'slow expires in the end (nobody renews it again)');
is( sql($r4,
		qq{SELECT min(committed_at) >= '$renewed'::timestamptz FROM registry.change_log WHERE table_name = 'public.fz' AND key = 'slow' AND op = 'delete'}),
	't', 'slow was deleted no earlier than the deadline its renewal gave it');
is(sql($r4, q{SELECT k FROM fz}), 'bad', 'bad, whose trigger refuses, is still there');

$r3->stop;
$r4->stop;

# ---------------------------------------------------------------------
# G. a table made ephemeral on an idle node expires at the interval
# ---------------------------------------------------------------------
# A node with no ephemeral table passes every 10 s only.  set_lease()
# wakes the expiry, and a wake-up that comes within the interval (here
# the INSERT's notification, 0.3 s after the last pass) must not put it
# back to sleep for the idle 10 s: the row, TTL 1 s, goes at the next
# pass (about 3 s), not at the idle one (about 10 s, as it did).
my $r5 = new_node('r5', conf => q{registry.expiry_interval = '3s'});
create_table([$r5], 'gy', 'CREATE TABLE gy (k text PRIMARY KEY, v text)');
usleep(300_000);
sql($r5, q{SELECT registry.set_lease('gy', '1s'); INSERT INTO gy VALUES ('y1', 'x')});
ok(poll_for(8, sub { sql($r5, q{SELECT count(*) FROM gy}) eq '0' }),
	'a table made ephemeral on an idle node: its row expires within 8 s (interval 3 s, idle pass 10 s)');
is(log_of($r5, 'gy', 'y1'), 'insert||r5,delete|expired|r5',
	'... deleted by the expiry');
$r5->stop;

# ---------------------------------------------------------------------
# H. held leases do not fill the expiry's batches
# ---------------------------------------------------------------------
my $r6 = new_node('r6', conf => $conf);
for my $t (qw(hx hy cx cy))
{
	create_table([$r6], $t, "CREATE TABLE $t (k text PRIMARY KEY, v text)");
}
# The expiry collects due leases a batch (1,000) at a time, the most
# recently granted first: the other table's row is written first, so that
# the held leases come before it, with a TTL that runs out after theirs.
# hx's rows must not run out before the client locks hx.
sql($r6, q{SELECT registry.set_lease('hx', '3s'); SELECT registry.set_lease('hy', '6s');
           SELECT registry.set_lease('cx', '1s'); SELECT registry.set_lease('cy', '4s')});
# 1. a table whose expiry backs off: hx, locked by a client
sql($r6, q{INSERT INTO hy VALUES ('y1', 'x')});
sql($r6, q{INSERT INTO hx SELECT 'x' || i, 'x' FROM generate_series(1, 1100) i});
my $hx_locker = $r6->background_psql('postgres');
$hx_locker->query_safe(q{BEGIN; LOCK TABLE hx IN EXCLUSIVE MODE;});
is(sql($r6, q{SELECT count(*) FROM hx}), '1100', '(hx locked with all its rows)');
ok( poll_until(sub {
		slurp_file($r6->logfile) =~
		  /registry: lease expiry failed: canceling statement due to lock timeout/ }),
	'the expiry of hx fails on the lock (logged)');
ok(poll_for(15, sub { sql($r6, q{SELECT count(*) FROM hy}) eq '0' }),
	'1,100 expired rows of a locked table: another table\'s row (TTL 6 s) expires within 15 s');
is(sql($r6, q{SELECT count(*) FROM hx}), '1100', '(hx, locked, kept its rows)');
is(sql($r6, q{SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'hx' AND l.mode = 'ExclusiveLock' AND l.granted}),
	'1', '(the lock was held throughout)');
$hx_locker->query_safe('COMMIT');
$hx_locker->quit;
ok(poll_for(60, sub { sql($r6, q{SELECT count(*) FROM hx}) eq '0' }),
	'once the lock goes, hx\'s rows expire too');

# 2. a table the cap holds back: cx
$r6->append_conf('postgresql.conf', qq{registry.expiry_cap = 50\nregistry.expiry_window = '1h'\n});
$r6->reload;
ok(poll_until(sub { sql($r6, q{SELECT current_setting('registry.expiry_cap')}) eq '50' }),
	'registry.expiry_cap is 50 on r6');
sql($r6, q{INSERT INTO cy VALUES ('y1', 'x')});
sql($r6, q{INSERT INTO cx SELECT 'c' || i, 'x' FROM generate_series(1, 1100) i});
ok(poll_for(10, sub { sql($r6, q{SELECT count(*) FROM cx}) eq '1050' }),
	'the cap lets 50 of cx\'s 1,100 expired rows go');
ok(poll_for(12, sub { sql($r6, q{SELECT count(*) FROM cy}) eq '0' }),
	'1,050 rows of cx held back by the cap: cy\'s row (TTL 4 s) expires within 12 s');
is(sql($r6, q{SELECT count(*) FROM cx}), '1050', '(cx still holds the rows the cap held back)');
$r6->stop;
done_testing();

# ---------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------

# Poll $cond every 100 ms for at most $secs seconds; true if it held.
sub poll_for
{
	my ($secs, $cond) = @_;
	my $deadline = time() + $secs;
	for (;;)
	{
		return 1 if $cond->();
		return 0 if time() > $deadline;
		usleep(100_000);
	}
}

# the notifications that reached the listener since the last look
sub pump_notes
{
	push @notes, read_notifications($listener);
}

