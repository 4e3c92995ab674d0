# The client APIs behind a real PgBouncer in transaction mode with a pool
# of 2 server connections (t/Pooler.pm; pgbouncer must be installed:
# scripts/common.sh does it, nothing is skipped).
# (a) LISTEN registry_change through the pooler delivers nothing to the
#     listener, while a direct LISTEN gets every change (the control).
# (b) registry.list + CALL registry.watch through the pooler: 10 clients
#     sharing the 2 server connections, listing at different moments while
#     a writer commits inserts, updates and deletes (multi-row transactions
#     too), each see exactly the committed changes after their listing
#     (each seq once, in order, as in registry.change_log), rebuild exactly
#     the final table, and never more than 2 server connections served them.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use RegistryMesh;
use Pooler;
use WatchCheck;

my $node = new_node('pgb', conf => "registry.change_log_size = 4096\n");
sql($node,
	q{CREATE TABLE svc (k text PRIMARY KEY, v int, note text); SELECT registry.replicate('svc')});
my $pool = Pooler->new($node, pool_size => 2, pool_mode => 'transaction');

my $psql = $node->installed_command('psql');
my $direct_conn = $node->connstr('postgres') . ' application_name=direct';
my $pooled_conn = $pool->connstr('postgres', 'application_name=pooled');

is($pool->safe_psql('SELECT 6 * 7'), '42', 'a query through pgbouncer works');
my ($mode) = map { $_->{pool_mode} } $pool->show('POOLS');
is($mode, 'transaction', 'the pool is in transaction mode');

sub notifications
{
	my ($out) = @_;
	my @got;
	while ($out =~
		/^Asynchronous notification "registry_change" with payload "(.*)" received from server process with PID \d+\.$/mg)
	{
		push @got, jdecode($1);
	}
	return @got;
}

# ---------------------------------------------------------------------
# (a) LISTEN through the pooler
# ---------------------------------------------------------------------
my $direct_l = WatchCheck::Client->new($psql, $direct_conn, 'direct listener');
$direct_l->run_safe('LISTEN registry_change');
my $pooled_l = WatchCheck::Client->new($psql, $pooled_conn, 'pooled listener');
$pooled_l->run_safe('LISTEN registry_change');
my @others = map { WatchCheck::Client->new($psql, $pooled_conn, "pooled $_") } 1 .. 3;
$_->{keep_notifications} = 1 for $direct_l, $pooled_l, @others;

# What each of the 2 server connections listens to: two clients each open
# a transaction (so each holds one server) and ask.
sub server_channels
{
	my ($x, $y) = @_;
	my %ch;
	for my $c ($x, $y)
	{
		my $o = $c->run_safe(
			q{BEGIN; SELECT pg_backend_pid() || ':' || coalesce((SELECT string_agg(c, ',') FROM pg_listening_channels() c), '')});
		my @l = grep { /^\d+:/ } split /\n/, $o;
		my ($pid, $chans) = split /:/, $l[-1] // '', 2;
		$ch{$pid} = $chans;
	}
	$_->run_safe('COMMIT') for $x, $y;
	return \%ch;
}
my $ch = server_channels(@others[ 0, 1 ]);
is(scalar(keys %$ch), 2, 'the pool has its 2 server connections');
is(scalar(grep { ($_ // '') eq 'registry_change' } values %$ch),
	1, 'the pooled LISTEN is in effect on one of them (so the test below is not vacuous)');

my $seq0 = sql($node, 'SELECT last_seq FROM registry.node');
# other clients write: two directly, three through the pooler
sql($node, "INSERT INTO svc VALUES ('n1', 1, 'a')");
sql($node, "INSERT INTO svc VALUES ('n2', 2, 'a')");
$others[0]->run_safe("INSERT INTO svc VALUES ('n3', 3, 'a')");
$others[1]->run_safe("UPDATE svc SET v = 10 WHERE k = 'n1'");
$others[2]->run_safe("DELETE FROM svc WHERE k = 'n2'");
my @want = ('n1 insert', 'n2 insert', 'n3 insert', 'n1 update', 'n2 delete');

my @direct_got;
poll_until(
	sub {
		push @direct_got, notifications($direct_l->run_safe('SELECT 1'));
		return @direct_got >= @want;
	});
is_deeply(
	[ map { "$_->{key} $_->{op}" } @direct_got ],
	\@want, 'control: the direct LISTEN got a notification for each of the 5 changes');
is_deeply([ map { $_->{seq} } @direct_got ],
	[ $seq0 + 1 .. $seq0 + 5 ], 'control: with seqs in order');

# the pooled listener's next commands, interleaved with the other pooled
# clients' (so that both server connections serve it in turn)
my @pooled_got;
for my $i (1 .. 6)
{
	push @pooled_got, notifications($pooled_l->run_safe('SELECT 1'));
	for my $o (@others)
	{
		my $out = $o->run_safe('SELECT 1');
		note($o->name . ' received a notification it did not ask for: ' . $out)
		  if notifications($out);
	}
}
push @pooled_got, notifications($pooled_l->run_safe("SELECT pg_sleep(0.2)"));
push @pooled_got, notifications($pooled_l->run_safe('SELECT 1'));
is(scalar(@pooled_got), 0,
	'LISTEN through pgbouncer (transaction mode): the listener got none of the 5 notifications')
  or diag(join("\n", map { canon($_) } @pooled_got));
$ch = server_channels(@others[ 0, 1 ]);
note('after the notifications, the server connections listen to: '
	  . join(', ', map { "$_: " . ($ch->{$_} || 'nothing') } sort keys %$ch));
note("pgbouncer's log about its server connections:\n"
	  . join("\n", grep { /S-0x|server/i } split /\n/, $pool->log));
$_->quit for $direct_l, $pooled_l, @others;
# The LISTEN stays on its server connection after the listener's
# transaction: whichever client runs there when a change commits gets the
# notification.  Part (b) gets a pgbouncer of its own, whose server
# connections listen to nothing.
$pool->stop;
$pool = Pooler->new($node, pool_size => 2, pool_mode => 'transaction');
$pooled_conn = $pool->connstr('postgres', 'application_name=pooled');

# ---------------------------------------------------------------------
# (b) list + watch through the pooler
# ---------------------------------------------------------------------
# Only the writer and the sampler connect directly (application_name
# 'direct'); every other client backend is a server connection of pgbouncer.
my $writer = WatchCheck::Client->new($psql, $direct_conn, 'writer');
my $sampler = WatchCheck::Client->new($psql, $direct_conn, 'sampler');
$writer->run_safe('SELECT 1');
$sampler->run_safe('SELECT 1');
# the sessions of part (a) and the safe_psql calls are gone
ok( poll_until(
		sub {
			$sampler->run_safe(
				q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'
				  AND application_name <> 'direct'}) eq '0';
		}),
	'no client backend besides the two direct sessions (the first pgbouncer\'s are gone)');

# the writer's transactions: inserts (also several rows at once), updates,
# deletes, upserts; keys w01.., all in svc
srand(35035);
my @txns;
my @live = ('n1', 'n3');
my $next = 0;
my $newkey = sub { my $k = sprintf('w%02d', ++$next); push @live, $k; return $k };
my $pick = sub { return $live[ int(rand(@live)) ] };
my $drop = sub { my $i = int(rand(@live)); return splice(@live, $i, 1) };
for my $j (0 .. 39)
{
	my $t = $j % 5;
	if ($t == 0 || @live < 3)
	{
		my @k = map { $newkey->() } 1 .. 3;
		push @txns, 'INSERT INTO svc VALUES ' . join(', ', map { "('$_', $j, 'ins')" } @k);
	}
	elsif ($t == 1) { push @txns, "UPDATE svc SET v = v + 100, note = 'upd$j' WHERE k = '" . $pick->() . "'"; }
	elsif ($t == 2) { push @txns, "DELETE FROM svc WHERE k = '" . $drop->() . "'"; }
	elsif ($t == 3)
	{
		my $u = $pick->();
		my $d = $drop->();
		my $n = $newkey->();
		push @txns,
		  "BEGIN; INSERT INTO svc VALUES ('$n', $j, 'txn'); UPDATE svc SET note = 'txn$j' WHERE k = '$u'; "
		  . "DELETE FROM svc WHERE k = '$d'; COMMIT";
	}
	else
	{
		my $k = $pick->();
		push @txns,
		  "INSERT INTO svc VALUES ('$k', $j, 'ups') ON CONFLICT (k) DO UPDATE SET v = excluded.v, note = excluded.note";
	}
}

my $nclients = 10;
my @w;
for my $i (0 .. $nclients - 1)
{
	my $c = WatchCheck::Client->new($psql, $pooled_conn, "watcher $i");
	push @w,
	  WatchCheck::Watcher->new($c,
		tables => q{ARRAY['svc'::regclass]},
		timeout => '1 s',
		($i % 2 ? (max_changes => 3) : ()));
	$w[$i]{start_after} = 4 * $i;    # lists after that many writer commits
}

my $sample_sql = q{SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '')
	FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name <> 'direct'};
my (%pids, $max_servers, $max_waiting, $max_sv, @failed);
$max_servers = $max_waiting = $max_sv = 0;
my $final_seq;
my $written = 0;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
my $iter = 0;
for (;;)
{
	$iter++;
	# one commit every 4th round, so that watches also wait for changes
	# (each waiting watch holds one of the 2 server connections)
	if ($written < @txns && $iter % 4 == 1)
	{
		$writer->run_safe($txns[ $written++ ]);
		$final_seq = $writer->run_safe('SELECT last_seq FROM registry.node')
		  if $written == @txns;
	}
	my $all_done = defined $final_seq;
	for my $x (@w)
	{
		next if $x->{failed};
		my $c = $x->client;
		if ($c->busy)
		{
			my ($o, $e) = $c->poll;
			if (!defined $o)
			{
				$all_done = 0;
				next;
			}
			if ($e ne '')
			{
				push @failed, $c->name . ": $e";
				$x->{failed} = 1;
				next;
			}
			if   ($x->{state} eq 'list') { $x->take_list($o); }
			else                         { $x->take_watch($o); }
		}
		if (!defined $x->{state})
		{
			if ($written >= $x->{start_after})
			{
				$x->{state} = 'list';
				$x->{listed_after} = $written;
				$c->send($x->list_sql);
			}
			$all_done = 0;
			next;
		}
		next if defined $final_seq && $x->{seq} >= $final_seq;
		$all_done = 0;
		$x->{state} = 'watch';
		$c->send($x->watch_sql);
	}
	my $s = $sampler->run_safe($sample_sql);
	my @p = grep { $_ ne '' } split /,/, $s;
	$pids{$_} = 1 for @p;
	$max_servers = @p if @p > $max_servers;
	if ($iter % 3 == 0)
	{
		for my $p ($pool->show('POOLS'))
		{
			my $sv = 0;
			$sv += $p->{$_} // 0 for qw(sv_active sv_idle sv_used sv_tested sv_login);
			$max_sv = $sv if $sv > $max_sv;
			$max_waiting = $p->{cl_waiting} if $p->{cl_waiting} > $max_waiting;
		}
	}
	last if $all_done || (@failed == @w && $written == @txns);
	if (time() > $deadline)
	{
		diag('time limit: positions '
			  . join(', ', map { ($_->{seq} // 'unlisted') } @w)
			  . " final $final_seq");
		last;
	}
	usleep(20_000);
}
is(join("\n", @failed), '', 'no watcher got an error through the pooler');
ok(defined $final_seq && $final_seq >= $seq0 + 5 + @txns,
	'the writer committed its ' . scalar(@txns) . ' transactions (last seq ' . ($final_seq // 'none') . ')');

is(sql($node, 'SELECT first_seq FROM registry.node'), '1', 'the ring holds the whole history');
my $final = table_json($node, 'svc');
my @notes;
my $leaked = 0;
for my $x (@w)
{
	my $name = $x->client->name;
	next if $x->{failed};
	check_listing($node, $name, $x, 'public.svc');
	check_seen($node, $name, $x->{seen}, $x->{list_seq}, $final_seq,
		q{table_name = 'public.svc'});
	is_deeply($x->rows_of('public.svc'), $final,
		"$name: listing + changes = the final table (" . scalar(keys %$final) . ' rows)');
	is(join('; ', $x->errors), '', "$name: positions and listing well formed");
	$leaked += $x->client->{notifications} // 0;
	push @notes, "$name listed at seq $x->{list_seq} (after $x->{listed_after} commits), "
	  . "$x->{calls} watch calls ($x->{empty} empty), " . scalar(@{ $x->{seen} }) . ' changes';
}
note($_) for @notes;
is($leaked, 0, 'no watcher got a notification (nobody listens behind the second pgbouncer)');
ok( (grep { $_->{list_seq} < $final_seq - 10 } @w) >= 5,
	'at least 5 clients listed while changes were still being written');

note("server backends seen: " . join(',', sort keys %pids)
	  . "; at most $max_servers at once; SHOW POOLS: at most $max_sv server connections, "
	  . "at most $max_waiting clients waiting");
ok($max_servers >= 1, 'pgbouncer server connections were seen in pg_stat_activity');
cmp_ok(scalar(keys %pids), '<=', 2,
	'at most 2 server connections (backend pids) served the 10 clients over the whole run');
cmp_ok($max_sv, '<=', 2, 'SHOW POOLS never showed more than 2 server connections');
my @servers = $pool->show('SERVERS');
cmp_ok(scalar(@servers), '<=', 2, 'SHOW SERVERS lists at most 2 server connections at the end');
my @cl = $pool->show('CLIENTS');
cmp_ok(scalar(@cl), '>=', $nclients, "the $nclients watchers are connected to pgbouncer at once");

$_->client->quit for @w;
$writer->quit;
$sampler->quit;
$pool->stop;
$node->stop;
done_testing();
