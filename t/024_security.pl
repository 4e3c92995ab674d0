# Roles are untrusted: no role gains rights through the registry.
#
# 1. A table owner who is only registry_admin puts code on the table
#    (a CHECK constraint, a trigger enabled ALWAYS, a domain, an index
#    expression) that tries to make itself superuser.  When a replicated
#    row arrives, that code runs as the owner in a security-restricted
#    operation, not as the sync worker's superuser: the attempt fails and
#    the row is still applied.
# 2. A non-superuser admin cannot make the sync worker connect with this
#    server's own identity: add_peer wants a password, and the worker
#    refuses a connection that did not use it; with password
#    authentication the same peer works.
# 3. resync() refuses a table the caller may not empty, or that is not a
#    registry table, before it waits for any lock.
# 4. Origins: invented origin names cannot fill registry.max_nodes for
#    good.  While the table is full a real node's rows still apply (their
#    origin is shown as unknown in the change log); once the invented
#    ones are out of the change log and the acceptors their slots are
#    reclaimed.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('sec_a');
my $nb = new_node(
	'sec_b', conf => q{
registry.max_nodes = 4
registry.change_log_size = 16
registry.max_acceptors = 16
});

# ---- 1. user code runs as the table owner, restricted ----

# Functions name their search_path: the sync worker applies with
# search_path = pg_catalog, as PostgreSQL's own apply worker runs with
# an empty one.

my $evil_setup = q{
CREATE ROLE mallory IN ROLE registry_admin;
GRANT CREATE ON SCHEMA public TO mallory;
SET ROLE mallory;
CREATE TABLE attempts (via text, who text, outcome text);
-- tries to become superuser; says who it ran as and how it went
CREATE FUNCTION escalate(via text) RETURNS boolean LANGUAGE plpgsql
    SET search_path = public AS $$
BEGIN
    BEGIN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
        INSERT INTO attempts VALUES (via, current_user, 'became superuser');
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO attempts VALUES (via, current_user, SQLERRM);
    END;
    BEGIN
        EXECUTE 'SET ROLE postgres';
        INSERT INTO attempts VALUES (via || ' set role', current_user, 'set role');
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO attempts VALUES (via || ' set role', current_user, SQLERRM);
    END;
    RETURN true;
END $$;
CREATE FUNCTION escalate_imm(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE
    SET search_path = public AS $$
BEGIN
    PERFORM escalate('index');
    RETURN v;
END $$;
CREATE FUNCTION escalate_trg() RETURNS trigger LANGUAGE plpgsql
    SET search_path = public AS $$
BEGIN
    PERFORM escalate('trigger');
    RETURN NEW;
END $$;
CREATE DOMAIN checked_int AS int CHECK (escalate('domain'));
CREATE TABLE evil (k int PRIMARY KEY, v int CHECK (escalate('check')), d checked_int);
CREATE INDEX evil_expr ON evil (escalate_imm(v));
CREATE TRIGGER evil_trg BEFORE INSERT OR UPDATE ON evil
    FOR EACH ROW EXECUTE FUNCTION escalate_trg();
ALTER TABLE evil ENABLE ALWAYS TRIGGER evil_trg;
SELECT registry.replicate('evil');
RESET ROLE;
};
sql($na, $evil_setup);
sql($nb, $evil_setup);
full_mesh($na, $nb);

# written on sec_a as a plain superuser session: the code runs there as the
# superuser who wrote, which is PostgreSQL's own rule for local writes
sql($na, q{INSERT INTO evil VALUES (1, 10, 100), (2, 20, 200)});
sql($na, q{DELETE FROM attempts; ALTER ROLE mallory NOSUPERUSER});
ok( poll_until(sub { sql($nb, 'SELECT count(*) FROM evil') eq '2' }),
	'the rows written on sec_a are applied on sec_b');
is(sql($nb, q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}),
	'f', 'the table owner did not become superuser on sec_b');
is( sql(
		$nb, q{SELECT string_agg(DISTINCT who, ',') FROM attempts}),
	'mallory',
	'every piece of user code ran as the table owner on sec_b');
is( sql(
		$nb, q{
SELECT string_agg(DISTINCT via, ',' ORDER BY via) FROM attempts
 WHERE outcome LIKE 'permission denied%' OR outcome LIKE 'must be superuser%'
    OR outcome LIKE '%security-restricted%' OR outcome LIKE 'cannot set parameter%'}
	),
	'check,check set role,domain,domain set role,index,index set role,trigger,trigger set role',
	'constraint, domain, index expression and ALWAYS trigger each ran and were refused');
is(sql($nb, q{SELECT count(*) FROM attempts WHERE outcome IN ('became superuser', 'set role')}),
	'0', 'no attempt succeeded');
is(sql($nb, q{SELECT k || ':' || v || ':' || d FROM evil ORDER BY k}),
	"1:10:100\n2:20:200", 'the rows are there, whole');
sql($na, q{UPDATE evil SET v = 11 WHERE k = 1; DELETE FROM evil WHERE k = 2});
ok( poll_until(
		sub { sql($nb, 'SELECT string_agg(k || \':\' || v, \',\') FROM evil') eq '1:11' }),
	'an update and a delete are applied as well');
is(sql($nb, q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}),
	'f', 'still not superuser after the update');
# the user code's refused attempts abort subtransactions of their own:
# the applied row must still carry the version it came with (not a local
# stamp of sec_b's, which would bounce between the nodes for ever)
is( sql(
		$nb, q{SELECT version || '/' || origin FROM registry.versions('evil') WHERE key = '1'}),
	sql($na, q{SELECT version || '/' || origin FROM registry.versions('evil') WHERE key = '1'}),
	'the applied row keeps the version and origin it had on sec_a');

# ---- 2. peers of non-superusers need a password ----

sql($na, q{
CREATE ROLE bob LOGIN IN ROLE registry_admin;
CREATE ROLE registry_sync LOGIN PASSWORD 'sync-secret' IN ROLE registry_peer;
CREATE TABLE pw (k int PRIMARY KEY, v text);
SELECT registry.replicate('pw');
});
sql($na, q{SELECT registry.remove_peer('sec_b')});
ok( $nb->poll_query_until(
		'postgres', q{
SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'registry sync sec_a'}),
	'sec_a no longer pulls from sec_b');
sql($nb, q{
CREATE ROLE registry_sync LOGIN PASSWORD 'sync-secret' IN ROLE registry_peer;
CREATE TABLE pw (k int PRIMARY KEY, v text);
SELECT registry.replicate('pw');
INSERT INTO pw VALUES (1, 'from b');
});

my $host = $nb->host;
my $port = $nb->port;
my ($ret, $out, $err) = $na->psql('postgres',
	"SET ROLE bob; SELECT registry.add_peer('b_as_bob', 'host=$host port=$port dbname=postgres user=postgres')");
like($err, qr/password is required/,
	'a non-superuser cannot add a peer without a password');

# trust authentication: sec_b never asks for the password given
sql($na,
	"SET ROLE bob; SELECT registry.add_peer('b_as_bob', 'host=$host port=$port dbname=postgres user=postgres password=anything')");
ok( poll_until(
		sub {
			(peer_status($na, 'b_as_bob', 'last_error') // '') =~
			  /password is required/;
		}),
	'the worker refuses a peer of a non-superuser that did not use the password'
) or diag(peer_status($na, 'b_as_bob', 'state, last_error'));
is(sql($na, 'SELECT count(*) FROM pw'),
	'0', 'nothing was pulled through that connection');

# with password authentication for the peer role, the same peer works
my $hba = $nb->data_dir . '/pg_hba.conf';
my $old_hba = slurp_file($hba);
open(my $fh, '>', $hba) or die;
print $fh "local all registry_sync scram-sha-256\n$old_hba";
close($fh);
$nb->reload;
sql($na,
	"SET ROLE bob; SELECT registry.add_peer('b_as_bob', 'host=$host port=$port dbname=postgres user=registry_sync password=sync-secret')");
ok(poll_until(sub { sql($na, 'SELECT count(*) FROM pw') eq '1' }),
	'with the password asked for and given, the peer of a non-superuser syncs');
is(sql($na, q{SELECT password_required FROM registry.peers WHERE name = 'b_as_bob'}),
	't', 'the peer is marked as needing a password');
sql($na, q{SELECT registry.remove_peer('b_as_bob')});

# ---- 3. resync refuses before it locks ----

sql($na, q{
CREATE TABLE guarded (k int PRIMARY KEY);
SELECT registry.replicate('guarded');
GRANT SELECT ON guarded TO bob;
});
my $holder = $na->background_psql('postgres', on_error_stop => 0);
$holder->query_safe(
	'BEGIN; LOCK TABLE guarded IN ACCESS SHARE MODE; LOCK TABLE pg_class IN ACCESS SHARE MODE;'
);
($ret, $out, $err) = $na->psql('postgres',
	"SET lock_timeout = '3s'; SET ROLE bob; SELECT registry.resync('pg_class')");
like($err, qr/is not a registry table/,
	'resync of a catalog is refused at once, not after waiting for its lock');
($ret, $out, $err) = $na->psql('postgres',
	"SET lock_timeout = '3s'; SET ROLE bob; SELECT registry.resync('guarded')");
like($err, qr/permission denied for table guarded/,
	'resync of a table the caller may not empty is refused at once');
$holder->query_safe('COMMIT');
$holder->quit;

# ---- 5. user code writing its own table while rows are applied ----

# An owner's trigger (enabled ALWAYS, so it fires for replicated rows)
# writes another row of the same table while rows are applied in bulk, with
# a version of its choosing far in the future, and takes a session
# advisory lock: the row it writes is a local write like any other (the
# clock does not jump), and the worker keeps no lock of the owner's.
my $forge_setup = q{
SET ROLE mallory;
CREATE TABLE bk (k text PRIMARY KEY, v text);
CREATE FUNCTION forge() RETURNS trigger LANGUAGE plpgsql
    SET search_path = public AS $$
BEGIN
    IF NEW.k <> 'forged' THEN
        INSERT INTO bk (k, v, registry_version, registry_origin)
            VALUES ('forged', 'f', 9000000000000000000, 'zz')
            ON CONFLICT DO NOTHING;
        PERFORM pg_advisory_lock(4242);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER forge AFTER INSERT ON bk FOR EACH ROW EXECUTE FUNCTION forge();
ALTER TABLE bk ENABLE ALWAYS TRIGGER forge;
SELECT registry.replicate('bk');
RESET ROLE;
};
sql($nb, $forge_setup);
sql($na, q{
SET ROLE mallory;
CREATE TABLE bk (k text PRIMARY KEY, v text);
SELECT registry.replicate('bk');
RESET ROLE;
INSERT INTO bk SELECT 'r' || i, 'row' FROM generate_series(1, 50) i;
});
ok( poll_until(
		sub { sql($nb, q{SELECT count(*) FROM bk WHERE k <> 'forged'}) eq '50' }),
	'sec_b pulls the 50 rows through the bulk statement (the table has a trigger)');
is( sql(
		$nb, q{SELECT registry_origin = 'sec_b' AND registry_version < 9000000000000000000 FROM bk WHERE k = 'forged'}
	),
	't',
	'the row the trigger wrote is a local write of sec_b, not a forged version');
cmp_ok(sql($nb, 'SELECT clock FROM registry.node'),
	'<', '9000000000000000000', 'and the clock did not jump to the forged version');
is( sql(
		$nb, q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
 WHERE l.locktype = 'advisory' AND a.backend_type = 'registry sync'}),
	'0',
	'the sync worker holds no advisory lock the trigger took');
check_verify([$nb], 'after user code wrote the table during an apply');

# ---- 4. invented origins do not fill the origin table for good ----

my $nc = new_node('sec_c');
for my $n ($nb, $nc)
{
	sql($n, q{
CREATE TABLE og (k text PRIMARY KEY, v int);
SELECT registry.replicate('og');
});
}
# sec_b has room for three origins besides itself; sec_a has one of them
$nb->psql('postgres',
	q{SELECT registry.apply_row('og', 'junk' || i, 1000 + i, 'invented' || i, true) FROM generate_series(1, 10) i}
);
is(sql($nb, q{SELECT count(*) FROM registry.versions('og') WHERE deleted}),
	'10', 'every invented origin\'s tombstone was written');
is(sql($nb, 'SELECT origins_used || \'/\' || origin_capacity FROM registry.node'),
	'4/4', 'the origin table is full');
ok(sql($nb, 'SELECT origins_unknown FROM registry.node') >= 7,
	'changes whose origin found no slot are counted');

add_peer($nb, $nc);
sql($nc, q{INSERT INTO og VALUES ('real1', 1)});
ok( poll_until(
		sub { sql($nb, q{SELECT count(*) FROM og WHERE k = 'real1'}) eq '1' }),
	'a new real node\'s row applies while the origin table is full')
  or diag(peer_status($nb, 'sec_c', 'last_error'));
is(sql($nb, q{SELECT origin FROM registry.versions('og') WHERE key = 'real1'}),
	'sec_c', 'the row carries its origin');
is( sql(
		$nb, q{SELECT coalesce(origin, 'unknown') FROM registry.change_log WHERE key = 'real1'}),
	'unknown', 'the change log shows its origin as unknown meanwhile');

# push the invented origins out of the change log (16) and acceptors (16)
sql($nb, q{INSERT INTO og SELECT 'local' || i, i FROM generate_series(1, 40) i});
sql($nc, q{INSERT INTO og VALUES ('real2', 2)});
ok( poll_until(
		sub {
			sql($nb, q{SELECT origin FROM registry.change_log WHERE key = 'real2'}) eq
			  'sec_c';
		}),
	'once unused, the invented origins are reclaimed and the real one gets a slot'
) or diag(sql($nb, 'SELECT * FROM registry.change_log'));
ok(sql($nb, 'SELECT origins_reclaimed FROM registry.node') > 0,
	'the reclaimed slots are counted');
check_verify([$nb], 'after the origin pressure');

done_testing();
