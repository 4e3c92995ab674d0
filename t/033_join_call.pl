# registry.join(peer, conninfo): an empty node joins a mesh with one call.
#
# A 3-node full mesh holds several registry tables (a composite key in a
# schema of its own, types from text to uuid, inet, arrays and jsonb, a
# NOT NULL column, constant and now() defaults, an ephemeral table, rows
# written on different nodes).  A fourth node with nothing but CREATE
# EXTENSION then:
#   1. is refused: as a role that is not a registry admin (42501); as an
#      admin who may not create tables in the schema (42501, with a hint);
#      with a peer that cannot be reached (08001, the peer's message in the
#      detail); each time leaving nothing behind (one transaction);
#   2. joins n1: the result rows say what was created (tables with their
#      keys and lease TTL), registered (a matching table it already had),
#      left alone (a table with the same name but other columns: 'differs',
#      unchanged and unregistered), not created (a schema missing here),
#      and which unsafe defaults were not copied (pg_read_file(), a plpgsql
#      function the peer's superuser put there), and that the peer was added;
#   3. joins again once the schema exists: the missing table is created,
#      the rest 'exists'; a third call changes nothing at all;
#   4. becomes a full mesh with the others, which converge: identical rows
#      and versions on all four, registry.verify() clean everywhere, the
#      lease TTL came along, and a row written on the new node reaches the
#      others.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my @mesh = map { new_node($_) } qw(jc1 jc2 jc3);
my ($n1, $n2, $n3) = @mesh;

# ---- the mesh and its tables ----

for my $n (@mesh)
{
	sql($n, q{
CREATE SCHEMA app;
-- a function a hostile peer's superuser names in a default
CREATE FUNCTION public.plf() RETURNS integer LANGUAGE plpgsql AS $$BEGIN RETURN 42; END$$;
});
}
create_table(\@mesh, 'svc', q{
CREATE TABLE svc (name text PRIMARY KEY, port integer NOT NULL,
                  meta jsonb DEFAULT '{}'::jsonb, weight numeric(10,2) DEFAULT 1.5,
                  created timestamptz DEFAULT now(), label varchar(32) DEFAULT 'none')});
create_table(\@mesh, 'app.endpoints', q{
CREATE TABLE app.endpoints (svc text, idx integer, addr inet NOT NULL, tags text[],
                            PRIMARY KEY (svc, idx))});
create_table(\@mesh, 'inst', q{
CREATE TABLE inst (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), svc text NOT NULL,
                   seen timestamptz DEFAULT CURRENT_TIMESTAMP)});
create_table(\@mesh, 'conf', 'CREATE TABLE conf (k text PRIMARY KEY, v text)');
create_table(\@mesh, 'pre', 'CREATE TABLE pre (id integer PRIMARY KEY, v text)');
# a superuser of the peers plants code in defaults
create_table(\@mesh, 'evil', q{
CREATE TABLE evil (k integer PRIMARY KEY, a text DEFAULT pg_read_file('/etc/passwd'),
                   b integer DEFAULT public.plf(), c text DEFAULT 'ok')});
sql($_, q{SELECT registry.set_lease('inst', '1 hour')}) for @mesh;
full_mesh(@mesh);

sql($n1, q{INSERT INTO svc (name, port) VALUES ('web', 80), ('db', 5432)});
sql($n2, q{INSERT INTO svc VALUES ('cache', 6379, '{"tier": 2}', 2.25, '2024-01-01 00:00+00', 'x')});
sql($n2, q{INSERT INTO app.endpoints VALUES ('web', 1, '10.0.0.1', '{a,b}'), ('web', 2, '10.0.0.2', NULL)});
sql($n3, q{INSERT INTO app.endpoints VALUES ('db', 1, '::1', '{}')});
sql($n3, q{INSERT INTO inst (svc) VALUES ('web'), ('db')});
sql($n1, q{INSERT INTO conf VALUES ('a', 'one'), ('b', 'two')});
sql($n2, q{INSERT INTO pre VALUES (1, 'p')});
sql($n3, q{INSERT INTO evil VALUES (1, 'x', 7, 'y')});
sql($n1, q{DELETE FROM svc WHERE name = 'db'});
my @tables = qw(svc app.endpoints inst conf pre evil);
wait_converged(\@mesh, \@tables, 'the three-node mesh converges');

# the serving function: what it says of a table, and who may call it
is( sql($n1, q{SELECT t FROM jsonb_array_elements(registry.decode_message(registry.table_definitions())->'tables') t
               WHERE t->>'name' = 'inst'}),
	'{"name": "inst", "schema": "public", "columns": [{"name": "id", "type": "uuid", "default": "gen_random_uuid()", "not_null": true, "generated": false}, {"name": "svc", "type": "text", "default": null, "not_null": true, "generated": false}, {"name": "seen", "type": "timestamp with time zone", "default": "CURRENT_TIMESTAMP", "not_null": false, "generated": false}], "primary_key": ["id"], "lease_ttl_ms": 3600000}',
	'table_definitions() describes columns, types, NOT NULL, defaults, key and lease TTL');
is(sql($n1, q{SELECT string_agg(t->>'schema' || '.' || (t->>'name'), ' ')
               FROM jsonb_array_elements(registry.decode_message(registry.table_definitions())->'tables') t}),
	'app.endpoints public.conf public.evil public.inst public.pre public.svc',
	'table_definitions() lists every registry table in (schema, name) order');
sql($n1, 'CREATE ROLE nobody LOGIN');
{
	my ($out, $e) = ('', '');
	$n1->psql('postgres', 'SELECT registry.table_definitions()',
		stdout => \$out, stderr => \$e,
		extra_params => [ '-v', 'VERBOSITY=verbose', '-U', 'nobody' ]);
	like($e, qr/ERROR:  42501: permission denied to read the registry.*HINT:  Peers connect as a member of registry_peer/s,
		'table_definitions() refuses a role that is not a member of registry_peer');
}

# ---- the new node ----

my $n4 = new_node('jc4');
# a table it already has, as on the peers (registered by the join), and one
# whose columns differ (left alone)
# and a function of the name a peer's default calls: the default must not
# come along and call it
sql($n4, q{
CREATE FUNCTION public.plf() RETURNS integer LANGUAGE plpgsql AS $$BEGIN RETURN 42; END$$;
CREATE TABLE pre (id integer PRIMARY KEY, v text);
CREATE TABLE conf (k text PRIMARY KEY, v integer);
INSERT INTO conf VALUES ('mine', 1);
});
my $conn1 = $n1->connstr('postgres');

# the error a statement gives on $node, as "SQLSTATE: message" lines with
# the detail and hint
sub error_of
{
	my ($node, $query, %opts) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $query,
		stdout => \$out, stderr => \$err,
		extra_params => [ '-v', 'VERBOSITY=verbose', @{ $opts{params} // [] } ]);
	return $err;
}

# what the node has that a join could change
sub join_state
{
	my ($node) = @_;
	return sql($node, q{
SELECT (SELECT string_agg(c.oid::regclass::text || ':' || c.relkind::text, ',' ORDER BY c.oid::regclass::text)
          FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
         WHERE s.nspname IN ('public', 'app')),
       (SELECT string_agg(format('%s %s', relid::regclass, lease_ttl), ',' ORDER BY relid::regclass::text)
          FROM registry.replicated_tables),
       (SELECT string_agg(name || ' ' || conninfo, ',') FROM registry.peers)});
}

my $empty_state = join_state($n4);

# 1. refusals, each leaving nothing behind

sql($n4, q{CREATE ROLE bob LOGIN});
my $err = error_of($n4,
	'SELECT * FROM registry.join(\'jc1\', ' . quote_literal($conn1) . ')',
	params => [ '-U', 'bob' ]);
like($err, qr/ERROR:  42501: permission denied for function join/,
	'a role that is not a registry admin gets 42501');

# an admin with a password, who may not create tables in public (PG 15)
sql($n1, q{CREATE ROLE joiner LOGIN PASSWORD 'jpw' IN ROLE registry_peer});
$n1->append_conf('pg_hba.conf', '');
{
	# password authentication for joiner, first line of pg_hba.conf
	my $hba = $n1->data_dir . '/pg_hba.conf';
	my $old = slurp_file($hba);
	open my $fh, '>', $hba or die $!;
	print $fh "local all joiner scram-sha-256\n$old";
	close $fh;
	$n1->reload;
}
sql($n4, q{CREATE ROLE alice LOGIN IN ROLE registry_admin});
my $alice_conn = "$conn1 user=joiner password=jpw";
$err = error_of($n4,
	'SELECT * FROM registry.join(\'jc1\', ' . quote_literal($alice_conn) . ')',
	params => [ '-U', 'alice' ]);
like($err, qr/ERROR:  42501: permission denied for schema public/,
	'an admin without CREATE on the schema gets 42501');
like($err, qr/HINT:  GRANT CREATE ON SCHEMA public TO alice/, '... with a hint');
unlike($err, qr/jpw/, '... and the password is not echoed');
unlike(slurp_file($n4->logfile), qr/STATEMENT:.*jpw/,
	'... nor written to the server log with the error');
# without the password the peer does not ask for one: refused
$err = error_of($n4,
	'SELECT * FROM registry.join(\'jc1\', ' . quote_literal("$conn1 password=wrong") . ')',
	params => [ '-U', 'alice' ]);
like($err, qr/ERROR:  2F003: password is required/,
	'a non-superuser may not join a peer that does not ask for the password');

$err = error_of($n4,
	q{SELECT * FROM registry.join('nowhere', 'host=/nonexistent/dir port=1 dbname=postgres')});
like($err, qr/ERROR:  08001: could not connect to peer "nowhere"/,
	'an unreachable peer gives 08001');
like($err, qr/DETAIL:  .*nonexistent\/dir/, '... with libpq\'s message in the detail');

is(join_state($n4), $empty_state, 'the refused joins left nothing behind');

# 2. the join

my $rows = sql($n4,
	'SELECT coalesce(table_name, \'-\'), action, coalesce(detail, \'-\') FROM registry.join(\'jc1\', '
	  . quote_literal($conn1) . ')');
note($rows);
my @rows = split /\n/, $rows;
is(scalar @rows, 9, 'the join reports nine rows');
is($rows[0], 'app.endpoints|not created|schema "app" does not exist here',
	'a table in a schema missing here is not created');
is($rows[1], 'public.conf|differs|column 2 is "v" integer here, "v" text on the peer',
	'a table of the same name with other columns differs');
is($rows[2], 'public.evil|created|4 columns, primary key (k)', 'evil is created');
like($rows[3], qr/^public\.evil\|default not copied\|column "a": pg_read_file\('\/etc\/passwd'::text\) is /,
	'the pg_read_file() default is not copied');
like($rows[4], qr/^public\.evil\|default not copied\|column "b": public\.plf\(\) is /,
	'the plpgsql function default is not copied');
is($rows[5], 'public.inst|created|3 columns, primary key (id), lease ttl 3600000 ms',
	'the ephemeral table is created with its TTL');
is($rows[6], 'public.pre|registered|-', 'the matching table it had is registered');
is($rows[7], 'public.svc|created|6 columns, primary key (name)', 'svc is created');
is($rows[8], '-|added|peer jc1', 'the peer is added');

is( sql($n4, q{SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      pg_get_expr(d.adbin, d.adrelid)
                 FROM pg_attribute a LEFT JOIN pg_attrdef d ON (d.adrelid, d.adnum) = (a.attrelid, a.attnum)
                WHERE a.attrelid = 'svc'::regclass AND a.attnum > 0 ORDER BY a.attnum}),
	q{name|text|t|
port|integer|t|
meta|jsonb|f|'{}'::jsonb
weight|numeric(10,2)|f|1.5
created|timestamp with time zone|f|now()
label|character varying(32)|f|'none'::character varying
registry_version|bigint|f|
registry_origin|text|f|}, 'svc has the peer\'s columns, types, NOT NULL and safe defaults');
is( sql($n4, q{SELECT string_agg(a.attname || '=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), ' ' ORDER BY a.attnum)
                 FROM pg_attribute a LEFT JOIN pg_attrdef d ON (d.adrelid, d.adnum) = (a.attrelid, a.attnum)
                WHERE a.attrelid = 'evil'::regclass AND a.attnum BETWEEN 1 AND 4}),
	q{k=- a=- b=- c='ok'::text}, 'evil has only its safe default');
is(sql($n4, q{SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
               WHERE d.adrelid = 'inst'::regclass ORDER BY d.adnum}),
	"gen_random_uuid()\nCURRENT_TIMESTAMP", 'inst has gen_random_uuid() and CURRENT_TIMESTAMP');
is( sql($n4, q{SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'svc'::regclass}),
	'CREATE UNIQUE INDEX svc_pkey ON public.svc USING btree (name)', 'svc has its primary key');
my $conf_before = sql($n4, q{SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                              WHERE attrelid = 'conf'::regclass AND attname = 'v'})
  . ' ' . sql($n4, q{SELECT count(*) FROM registry.replicated_tables WHERE relid = 'conf'::regclass})
  . ' ' . sql($n4, 'SELECT string_agg(k || v, \',\') FROM conf');
is($conf_before, 'integer 0 mine1', 'conf is unchanged and not registered');

# 3. again, once the schema exists: app.endpoints is created, the rest exists

sql($n4, 'CREATE SCHEMA app');
$rows = sql($n4,
	'SELECT coalesce(table_name, \'-\'), action, coalesce(detail, \'-\') FROM registry.join(\'jc1\', '
	  . quote_literal($conn1) . ')');
is( $rows, q{app.endpoints|created|4 columns, primary key (svc, idx)
public.conf|differs|column 2 is "v" integer here, "v" text on the peer
public.evil|exists|-
public.inst|exists|-
public.pre|exists|-
public.svc|exists|-
-|exists|peer jc1}, 'a second join creates the table whose schema now exists, the rest exists');

my $state = join_state($n4);
$rows = sql($n4,
	'SELECT coalesce(table_name, \'-\'), action FROM registry.join(\'jc1\', '
	  . quote_literal($conn1) . ')');
is( $rows, q{app.endpoints|exists
public.conf|differs
public.evil|exists
public.inst|exists
public.pre|exists
public.svc|exists
-|exists}, 'a third join reports that everything exists');
is(join_state($n4), $state, '... and changes nothing');
is(sql($n4, q{SELECT lease_ttl FROM registry.replicated_tables WHERE relid = 'inst'::regclass}),
	'01:00:00', 'the lease TTL came along');

$err = error_of($n4, q{SELECT * FROM registry.join('jc1', 'dbname=postgres host=elsewhere')});
like($err, qr/ERROR:  42710: peer "jc1" exists with another connection string\n.*HINT:  /s,
	'joining a known peer with another conninfo is refused, with a hint');

# 4. the full mesh converges

add_peer($n4, $n2);
add_peer($n4, $n3);
add_peer($_, $n4) for @mesh;
sql($n4, q{INSERT INTO svc (name, port) VALUES ('new', 8080)});
my @all = (@mesh, $n4);
my @joined = qw(svc app.endpoints inst pre evil);
wait_converged(\@all, \@joined, 'the four nodes converge', sync_ok => 0);
for my $t (@joined)
{
	my $want = table_rows($n1, $t);
	for my $n ($n2, $n3, $n4)
	{
		is(table_rows($n, $t), $want, "$t on " . $n->name . ' has the same rows and versions as on jc1');
	}
}
is(sql($n1, q{SELECT port FROM svc WHERE name = 'new'}), '8080', 'a row written on the new node reached jc1');
is(sql($n4, 'SELECT count(*) FROM inst'), '2', 'the ephemeral rows arrived');
is(sql($n4, 'SELECT string_agg(k || v, \',\') FROM conf'), 'mine1', 'conf on the new node is still its own');
check_verify(\@all, 'after the join');

$_->stop for @all;
done_testing();
