# Structured fuzzing of what peers send, with a fixed seed.
#
# A. The message readers, through registry.decode_message(bytea): valid
#    messages of every kind (changes with and without rows, with several
#    tables, resync changes and tables no longer registered; digests with
#    ranges; bucket entries with and without rows, with "more"; rows in
#    every state), compressed and not, are mutated (bit flips, bytes
#    replaced, boundary integers over aligned positions and over known
#    fields, truncation, bytes inserted, deleted and duplicated, a wrong
#    raw length, broken zlib streams, trailing bytes, flag bytes; see
#    t/FuzzMessages.pm) and decoded by a superuser on a real node, in
#    batches: a plpgsql loop catches each error and records its SQLSTATE.
#    The backend must never crash (the session survives, the postmaster
#    is not restarted, the log shows no crash), every error must be a
#    protocol violation (08P01) or a message over registry.max_message_size
#    (54000), every unmutated message must be accepted, and the backend's
#    peak memory must stay bounded.
#
# B. The sync worker, through a fake peer (t/FakePeer.pm): a victim node
#    pulls from the fake and from a real node, good.  The fake answers
#    with fuzzed answers of every kind (changes, root digests, bucket
#    entries, fetched rows, pages of a whole-table pull): mutated as in A,
#    or well-formed lies that are not the answer to the request, or now
#    and then valid.  Each is led to the request it answers the way
#    t/023_hostile_peer.pl does it (a position before changes; a digest
#    whose root differs before entries or pages; entries naming newer
#    keys before rows).  Nothing is asserted per
#    answer (a mutated answer may be valid, and may write rows of the
#    table it is about: that is replication); every N answers and at the
#    end: the postmaster was not restarted, the sync worker is the same
#    process, its peak memory stayed bounded, a row written on good still
#    arrives, registry.verify() finds nothing wrong, and a table no
#    crafted answer is about is unchanged.
#
# Part A's inputs depend on the seed only; part B's answers too, but for
# their versions (clock stamps, which the victim must accept) and for
# which request takes each, which depends on timing.  By default 3,000
# decoder inputs and 300 fake-peer answers, about 45 s: for CI.  A soak
# (about 25 minutes on 2 cores):
#
#   REGISTRY_FUZZ_INPUTS=100000 REGISTRY_FUZZ_ANSWERS=10000 \
#   REGISTRY_FUZZ_SEED=12345 make installcheck PROVE_TESTS=t/025_fuzz.pl
#
# (PROVE_FLAGS=-v shows the counts; they are also in
# tmp_check/log/regress_log_025_fuzz, with the sync worker's memory at
# every checkpoint.)
# The seed is printed; a failing decoder input is printed in hex with its
# seed and index, and fuzz_rng(seed, 1, index) in t/FuzzMessages.pm makes
# it again.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use RegistryMesh;
use FakePeer;
use FuzzMessages;

# UTF-8 databases, as in t/023: bytes that are not UTF-8 are then invalid
# text for the readers (PostgreSQL::Test::Utils drops LC_ALL when loaded;
# initdb takes the encoding from it)
$ENV{LC_ALL} = 'C.UTF-8';

my $SEED = $ENV{REGISTRY_FUZZ_SEED} // 20250607;
my $INPUTS = $ENV{REGISTRY_FUZZ_INPUTS} // 3000;
my $ANSWERS = $ENV{REGISTRY_FUZZ_ANSWERS} // 300;
my $CHECK_EVERY = 100;    # fake-peer answers between two checkpoints
my $BATCH = 250;          # decoder inputs per round trip
my $started = time();
note("seed $SEED (REGISTRY_FUZZ_SEED), $INPUTS decoder inputs (REGISTRY_FUZZ_INPUTS), "
	  . "$ANSWERS fake-peer answers (REGISTRY_FUZZ_ANSWERS)");

# Peak memory allowed above a process's resident size at the start.
#
# Decoder: an input is at most $max_input bytes (checked below).  The
# reader works on it in place or, compressed, inflates it into a buffer
# of the raw length its header claims, filled only as far as the stream
# goes (the streams here are deflated payloads of at most $max_input
# bytes, or such streams damaged); what it builds is charged against 3 x
# the raw length + 64 kB before it is allocated; decode_message() then
# makes JSON text and jsonb of a few times that.  All of it is freed when
# the input's subtransaction ends.  So one input needs at most ~20 x
# $max_input, about 3 MB: 100 MB is far above what a correct reader
# needs and far below what a leak over thousands of inputs, or an
# allocation sized by an unchecked count (up to 2^31 items), would take.
#
# Sync worker: the same holds for one answer (all are under 1 MB) plus
# the keys queued to fetch (a few kB); 100 MB again.
my $MEM_BOUND_KB = 100 * 1024;

sub elapsed { return sprintf('%.1f s', time() - $started); }

# A process's resident memory by kind, for the notes: anonymous (its own
# heap: where a leak would show), shared (the shared buffers and other
# shared memory it has touched, which grows with the data it reads) and
# file-backed; in kB.
sub memory_parts
{
	my ($pid) = @_;
	my %m;
	open my $fh, '<', "/proc/$pid/status" or return 'memory unreadable';
	while (<$fh>)
	{
		$m{$1} = $2 if /^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):\s+(\d+)/;
	}
	close $fh;
	return sprintf('VmRSS %s kB (anonymous %s, shared %s, file %s), VmHWM %s kB',
		map { $m{$_} // '?' } qw(VmRSS RssAnon RssShmem RssFile VmHWM));
}

# ====================================================================
# A. The decoder
# ====================================================================

my $dec = new_node('dec', conf => "restart_after_crash = on\n");
is(sql($dec, 'SHOW server_encoding'), 'UTF8', 'the decoder node\'s database is UTF8');

# One batch: the inputs concatenated, each as a 4-byte length and its
# bytes, in a file the server reads.  Each input is decoded in its own
# subtransaction; its outcome (SQLSTATE, message and detail of the error,
# or the kind decoded) is recorded, in a logged table: after a crash the
# outcomes of the batches before it are still there to count.
sql($dec, q{
CREATE TABLE fuzz_outcome (
    batch int, idx int, hkind int, sqlstate text, message text, detail text, rkind text);
CREATE FUNCTION fuzz_decode(path text, p_batch int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    buf bytea := pg_read_binary_file(path);
    total int := length(buf);
    pos int := 0;
    i int := 0;
    n int;
    m bytea;
    res jsonb;
    st text;
    msg text;
    det text;
BEGIN
    WHILE pos < total LOOP
        n := (get_byte(buf, pos) << 24) | (get_byte(buf, pos + 1) << 16)
             | (get_byte(buf, pos + 2) << 8) | get_byte(buf, pos + 3);
        m := substring(buf FROM pos + 5 FOR n);
        pos := pos + 4 + n;
        st := NULL; msg := NULL; det := NULL; res := NULL;
        BEGIN
            res := registry.decode_message(m);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                                    det = PG_EXCEPTION_DETAIL;
        END;
        INSERT INTO fuzz_outcome VALUES (p_batch, i,
            CASE WHEN n >= 3 THEN get_byte(m, 2) END, st, msg, det, res->>'kind');
        i := i + 1;
    END LOOP;
    RETURN i;
END $$;
});

my $dir = $dec->basedir . '/fuzz';
mkdir $dir;

# Input $i: a valid message of a random kind, compressed a third of the
# time, mutated unless it is one of the 8% sent as they are.
sub decoder_input
{
	my ($i) = @_;
	my $r = fuzz_rng($SEED, 1, $i);
	my ($kind, $m) = gen_any($r);
	my $z = $r->chance(0.35) ? $r->pick(1, 6, 9, 'huffman') : undef;
	return { valid => 1, kind => $kind, bytes => finish_message($m, $z), what => 'valid' }
	  if $r->chance(0.08);
	my ($bytes, $what) = mutate($r, $m, $z);
	return { valid => 0, kind => $kind, bytes => $bytes, what => $what };
}

sub write_batch
{
	my ($path, $inputs) = @_;
	open my $fh, '>:raw', $path or die "cannot write $path: $!";
	print $fh pack('N', length $_->{bytes}), $_->{bytes} for @$inputs;
	close $fh or die "cannot write $path: $!";
}

my $sess = FuzzMessages::Session->new($dec);
my $dec_pid = $sess->query_safe('SELECT pg_backend_pid()');
my $dec_snap = victim_snapshot($dec);
my (@bad, $crash);
my $max_input = 0;
my ($mem0, $peak) = ({}, 0);
my $batches = int(($INPUTS + $BATCH - 1) / $BATCH);

# decode one batch of inputs; false if the session did not survive it
sub run_batch
{
	my ($b, $inputs) = @_;
	my $path = "$dir/batch-$b.bin";
	write_batch($path, $inputs);
	my ($out, $err) = eval { $sess->query("SELECT fuzz_decode('$path', $b)") };
	unlink $path;
	return defined $out && $err !~ /\b(ERROR|FATAL|PANIC):/ && $out eq scalar(@$inputs);
}

# A warm-up batch of valid messages (not counted), then the resident
# size the bound is measured from.
run_batch(-1, [ map { my $r = fuzz_rng($SEED, 0, $_); { bytes => (gen_any($r))[1] } } 0 .. 49 ])
  or die 'the warm-up batch of valid messages failed';
$sess->query_safe('DELETE FROM fuzz_outcome');
my $peak_reset = reset_peak_memory($dec_pid);
$mem0 = worker_memory($dec_pid);

for my $b (0 .. $batches - 1)
{
	my @inputs =
	  map { decoder_input($_) } ($b * $BATCH) .. (($b + 1) * $BATCH < $INPUTS ? ($b + 1) * $BATCH - 1 : $INPUTS - 1);
	for (@inputs)
	{
		$max_input = length $_->{bytes} if length $_->{bytes} > $max_input;
	}
	if (!run_batch($b, \@inputs))
	{
		$crash = { batch => $b, inputs => \@inputs };
		last;
	}
	my $m = worker_memory($dec_pid);
	$peak = $m->{hwm} if defined $m->{hwm} && $m->{hwm} > $peak;

	# inputs whose outcome is wrong: an error of another SQLSTATE, a
	# valid message refused, or a message decoded as another kind
	my @valid = grep { $inputs[$_]{valid} } 0 .. $#inputs;
	my $wrong = $sess->query_safe(qq{
SELECT idx, coalesce(sqlstate, ''), coalesce(message, ''), coalesce(detail, ''), coalesce(rkind, '')
FROM fuzz_outcome WHERE batch = $b AND (
    sqlstate NOT IN ('08P01', '54000')
    OR (sqlstate IS NOT NULL AND idx = ANY('{@{[ join(',', @valid) ]}}'::int[]))
    OR (sqlstate IS NULL AND rkind IS DISTINCT FROM
        CASE hkind WHEN 67 THEN 'changes' WHEN 68 THEN 'digest' WHEN 69 THEN 'entries' WHEN 82 THEN 'rows'
                   WHEN 84 THEN 'definitions' END))
ORDER BY idx});
	for my $line (split /\n/, $wrong)
	{
		my ($idx, $st, $msg, $det, $rkind) = split /\|/, $line, 5;
		push @bad,
		  sprintf('seed %s input %d (%s %s): %s %s %s%s; input: %s',
			$SEED, $b * $BATCH + $idx, $inputs[$idx]{kind}, $inputs[$idx]{what},
			$st || 'accepted', $msg, $det, $rkind ? " decoded as $rkind" : '',
			hexdump($inputs[$idx]{bytes}, 400));
	}
}

# The session did not survive a batch: find the input that kills a
# backend, one per session, and show it.
if ($crash)
{
	my $b = $crash->{batch};
	diag("the decoding session died in batch $b (inputs "
		  . $b * $BATCH . ' to ' . ($b * $BATCH + $#{ $crash->{inputs} }) . ')');
	diag("server log:\n" . join("\n", crash_lines(server_log_since($dec, $dec_snap->{log_offset}))));
	for my $i (0 .. $#{ $crash->{inputs} })
	{
		last unless poll_until(sub { defined try_sql($dec, 'SELECT 1') });
		my $in = $crash->{inputs}[$i];
		my $path = "$dir/one.bin";
		open my $fh, '>:raw', $path or die;
		print $fh $in->{bytes};
		close $fh;
		my $s = eval { FuzzMessages::Session->new($dec) } or next;
		my ($out, $err) = eval { $s->query("SELECT registry.decode_message(pg_read_binary_file('$path')) IS NOT NULL") };
		if (!defined $out)
		{
			my $file = $PostgreSQL::Test::Utils::tmp_check . "/fuzz-crash-$SEED-" . ($b * $BATCH + $i) . '.bin';
			open my $oh, '>:raw', $file or die;
			print $oh $in->{bytes};
			close $oh;
			diag(sprintf('input %d (seed %s, %s %s) kills the backend; saved in %s; hex: %s',
				$b * $BATCH + $i, $SEED, $in->{kind}, $in->{what}, $file, hexdump($in->{bytes})));
			last;
		}
		$s->quit;
	}
	# a session to count what was decoded before
	poll_until(sub { defined try_sql($dec, 'SELECT 1') });
	$sess = FuzzMessages::Session->new($dec);
}
ok(!$crash, 'A: the decoding session survived every batch');

assert_survived($dec, $dec_snap, 'A');
is(scalar @bad, 0, 'A: every error is 08P01 or 54000, every valid message is accepted as its kind');
diag($_) for @bad[ 0 .. ($#bad < 9 ? $#bad : 9) ];

my $counts = $sess->query_safe(q{
SELECT count(*), count(*) FILTER (WHERE sqlstate IS NULL) FROM fuzz_outcome WHERE batch >= 0});
my ($n_in, $n_ok) = split /\|/, $counts;
note("A: $n_in inputs decoded (of $INPUTS), $n_ok accepted, largest input $max_input bytes, "
	  . elapsed());
note("A: errors by SQLSTATE: "
	  . $sess->query_safe(q{
SELECT string_agg(sqlstate || ' ' || n, ', ' ORDER BY n DESC) FROM (
  SELECT sqlstate, count(*) n FROM fuzz_outcome WHERE sqlstate IS NOT NULL GROUP BY 1) s}));
note("A: errors by detail (top 10):\n"
	  . $sess->query_safe(q{
SELECT string_agg(format('  %6s  %s', n, d), E'\n' ORDER BY n DESC, d) FROM (
  SELECT coalesce(nullif(detail, ''), message) d, count(*) n FROM fuzz_outcome
  WHERE sqlstate IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10) s}));
is($n_in, $INPUTS, 'A: every input was decoded or refused') unless $crash;

cmp_ok($max_input * 20, '<', $MEM_BOUND_KB * 1024,
	'A: the inputs are small enough for the memory bound to mean something');
if ($peak_reset && defined $mem0->{rss} && ($peak || !$INPUTS))
{
	note("A: decoding backend: VmRSS $mem0->{rss} kB at the start, VmHWM $peak kB at most; "
		  . 'at the end ' . memory_parts($dec_pid));
	cmp_ok($peak - $mem0->{rss}, '<', $MEM_BOUND_KB,
		'A: the decoding backend\'s peak memory grew by less than 100 MB');
}
else
{
	fail('A: the decoding backend\'s peak memory could be measured');
}
$sess->quit;
$dec->stop;

# ====================================================================
# B. The sync worker
# ====================================================================

# 16 buckets: a root that differs leads straight to the entries of all
# buckets.  Long polls of 30 ms and no periodic rounds: the worker is
# quickly free for the next request, and rounds start only when asked
# for, so that a crafted digest is taken as a round's first.
my $fake = new_fake_peer('fake');
my $victim = new_node('victim', conf => "registry.digest_buckets = 16\n"
	  . "registry.sync_interval = '30ms'\nregistry.antientropy_interval = '10min'\n"
	  . "restart_after_crash = on\n");
my $good = new_node('good', conf => "registry.digest_buckets = 16\n");

my $HP = 'public.hp';    # the table the crafted answers are about
my $COLS = [ [ 'k', 'text' ], [ 'v', 'text' ] ];
create_table([ $victim, $good ], 'hp', 'CREATE TABLE hp (k text PRIMARY KEY, v text)');
# fz_guard: rows and tombstones no crafted answer is about; it must not change
create_table([ $victim, $good ], 'fz_guard', 'CREATE TABLE fz_guard (k text PRIMARY KEY, v text)');
create_table([ $victim, $good ], 'gt', 'CREATE TABLE gt (k text PRIMARY KEY, v text)');
sql($good, q{
INSERT INTO fz_guard SELECT 'g' || g, 'guard ' || g FROM generate_series(1, 50) g;
DELETE FROM fz_guard WHERE k IN ('g1', 'g2', 'g3')});
full_mesh($victim, $good);
wait_converged([ $victim, $good ], ['fz_guard'], 'B: the guard table reached the victim');
sql($victim,
	"SELECT registry.add_peer('fake', " . quote_literal($fake->connstr('postgres')) . ')');
ok( $victim->poll_query_until('postgres',
		q{SELECT count(*) = 2 FROM registry.peer_status WHERE rounds > 0}),
	'B: the victim has finished a round with the fake and with good');
my $guard0 = table_state($victim, 'fz_guard') . ' / ' . versions_state($victim, 'fz_guard');

# With nothing queued the fake answers fetch_rows with an error, and an
# error answer pauses the connection with a doubling backoff.  A mutated
# entries answer may name keys no rows answer was queued for: answer
# those as absent instead, so that the fuzzing is not spent waiting.
fake_sql($fake, q{
CREATE OR REPLACE FUNCTION registry.fake_fetch(tbl text, keys text[], max_bytes int, nargs int)
RETURNS bytea LANGUAGE plpgsql AS $$
DECLARE
    call_id bigint := registry.fake_record('fetch_rows',
        format('tbl=%s nkeys=%s', tbl, cardinality(keys)));
    q record;
    body bytea;
BEGIN
    SELECT * INTO q FROM registry.fake_take('fetch_rows', tbl, call_id);
    IF q.hit THEN
        RETURN q.answer;
    END IF;
    body := registry.fake_str(tbl) || int4send(2) || registry.fake_str('k')
        || registry.fake_str('text') || registry.fake_str('v') || registry.fake_str('text')
        || int4send(cardinality(keys));
    FOR i IN 1 .. cardinality(keys) LOOP
        body := body || registry.fake_str(keys[i]) || '\x03'::bytea;
    END LOOP;
    RETURN registry.fake_msg('R', body);
END $$});

my $vs = FuzzMessages::Session->new($victim);
my $fs = FuzzMessages::Session->new($fake);
# the servers log every statement (PostgreSQL::Test::Cluster): not those
# of these sessions, which poll every few milliseconds and queue answers
# in hex (a soak's log would run to gigabytes); the worker's requests to
# the fake are still logged
$_->query_safe(q{SET log_statement = 'none'}) for ($vs, $fs);

# A query on the victim; after a crash, once it answers again.  undef if
# it does not within the time limit.
sub vq
{
	my ($query) = @_;
	my $out;
	poll_until(
		sub {
			$out = eval { $vs->query_safe($query) };
			return 1 if defined $out;
			my $s = eval { FuzzMessages::Session->new($victim) };
			$vs = $s if $s && eval { $s->query_safe(q{SET log_statement = 'none'}); 1 };
			return 0;
		});
	return $out;
}

sub fq { return $fs->query_safe($_[0]); }

my $snap = victim_snapshot($victim);
my $wpid = $snap->{pid};
my $wmem_start = memory_start($wpid);
my $wmem0 = $wmem_start->{m0};

# ---- keys with their hashes ----

# Keys of several shapes, with their key hashes (int4 form) from the
# victim, handed out fresh: an entry is newer than anything the victim
# has only if its key is new there.
my (@pool, $pool_next);
$pool_next = 0;

sub fresh_keys
{
	my ($n) = @_;
	if (@pool < $n)
	{
		my $from = $pool_next + 1;
		$pool_next += 5000;
		push @pool, map { [ split /\|/ ] } split /\n/, vq(qq{
SELECT k, registry.key_hash(k) FROM (
  SELECT CASE g % 6 WHEN 0 THEN 'fz ' || g || ' with spaces'
                    WHEN 1 THEN 'fz"' || g || '\\quote'
                    WHEN 2 THEN 'ключ-' || g
                    WHEN 3 THEN 'fz-' || g || '-' || repeat('x', g % 150)
                    ELSE 'fz-' || g END AS k
  FROM generate_series($from, $pool_next) g) s});
	}
	return splice(@pool, 0, $n);
}

# in (key hash, key) order: the hash as unsigned, i.e. its int4 form
sub by_hash
{
	return sort { $a->[1] <=> $b->[1] || $a->[0] cmp $b->[0] } @_;
}

# ---- answers ----

my $keyn = 0;

sub victim_key
{
	my ($r) = @_;
	my $n = ++$keyn;
	return $r->pick("c-$n", "c $n with spaces", "c\"$n\\q", "\xd0\xba-$n", 'c' x $r->below(200) . "-$n");
}

sub victim_value
{
	my ($r, $k) = @_;
	return [ $k, rand_value($r) ];
}

# a digest of hp whose root differs from the victim's: few keys lead to
# the entries of all buckets, many to a whole-table pull
sub lead_digest
{
	my ($r, %o) = @_;
	return msg_digest(table => $HP, nbuckets => 16, root => $r->next64 | 1, %o);
}

# The answer kinds and how often: C changes, D root digest, E bucket
# entries, R fetched rows, P pages of a whole-table pull.
my @KINDS = ([ 2, 'C' ], [ 2, 'D' ], [ 3, 'E' ], [ 3, 'R' ], [ 2, 'P' ]);

my $seqbase = 1000;

# One episode: the answers to queue, [fn, answer or undef, pages or
# undef], and which of them are the fuzzed ones (indexes).  The fuzzed
# answer is valid for its request a tenth of the time; otherwise it is
# either mutated (t/FuzzMessages.pm) or, a quarter of the time, a lie:
# well-formed, but not the answer to the request (another epoch, seqs
# not after the position, this node's own name; a digest at other
# buckets or with ranges; entries out of order, at another bucket count,
# with a "more" that does not resume after them; rows of other keys or
# in another order; pages that say "more"), sometimes mutated as well.
sub episode
{
	my ($r, $kind) = @_;
	my $how = $r->weighted([ 1, 'valid' ], [ 7, 'mutated' ], [ 2, 'lie' ]);
	my $lie = $how eq 'lie' ? $r->below(4) : -1;
	my $z = $r->chance(0.3) ? $r->pick(1, 6, 'huffman') : undef;
	my $out = sub {
		my ($m) = @_;
		return $how eq 'mutated' || ($how eq 'lie' && $r->chance(0.3))
		  ? (mutate($r, $m, $z))[0]
		  : finish_message($m, $z);
	};
	my $version = sub { now_version() };
	my $origin = sub { $r->pick('fake', 'fake', 'n9') };
	if ($kind eq 'C')
	{
		# a gap moves the worker to seq $s whatever it had, then the answer
		# covers the seqs after it
		my $s = ($seqbase += 1000);
		my $pos = msg_changes(status => 1, first_seq => $s + 1, last_seq => $s, upto_seq => $s);
		my $m = gen_changes(
			$r,
			node => $lie == 0 ? 'victim' : $FakePeer::FAKE_NODE,
			epoch => $FakePeer::FAKE_EPOCH + ($lie == 1 ? 1 : 0),
			after_seq => $lie == 2 ? $s - 3 : $s,
			status => 0,
			with_rows => $lie == 3 ? 0 : 1,
			min_changes => 1,
			max_changes => 20,
			tables => sub {
				[
					[ $HP, $COLS ],
					$r->chance(0.3) ? ([ '', [] ]) : (),
					$r->chance(0.1) ? ([ 'public.not_here', $COLS ]) : (),
					$r->chance(0.1) ? ([ $HP, $COLS ]) : ()
				];
			},
			key => sub { victim_key($r) },
			values => sub { victim_value($r, $_[0]) },
			version => $version,
			origin => $origin);
		return ([ [ 'changes_since', $pos ], [ 'changes_since', $out->($m) ] ], [1]);
	}
	if ($kind eq 'D')
	{
		my $m = gen_digest(
			$r,
			node => $FakePeer::FAKE_NODE,
			table => $lie == 0 ? 'public.hp_x' : $HP,
			nbuckets => $lie == 1 ? 32 : $r->pick(16, 16, 8, 1),
			ranges => $lie == 2 ? 1 : 0,
			live => $r->pick(0, 3, 1_000_000),
			tombstones => $r->pick(0, 2));
		return ([ [ 'digest', $out->($m) ] ], [0]);
	}
	if ($kind eq 'E')
	{
		my @k = by_hash(fresh_keys($r->between(1, 20)));
		@k = reverse @k if $lie == 0 && @k > 1;
		push @k, $k[0] if $lie == 1;
		my $more = $lie == 2 || $r->chance(0.2) ? 1 : 0;
		my $m = gen_entries(
			$r,
			table => $HP,
			with_rows => 0,
			nbuckets => $lie == 3 ? 8 : 16,
			keys => [ map { $_->[0] } @k ],
			states => [ 1, 2 ],
			more => $more,
			after_hash => $k[ $lie == 2 ? 0 : -1 ][1] - ($lie == 2 && @k == 1 ? 1 : 0),
			version => $version,
			origin => $origin);
		return ([ [ 'digest', lead_digest($r) ], [ 'bucket_entries', $out->($m) ] ], [1]);
	}
	if ($kind eq 'R')
	{
		my @k = map { $_->[0] } by_hash(fresh_keys($r->between(1, 10)));
		my $entries = msg_entries(
			table => $HP,
			nbuckets => 16,
			rows => [ map { { key => $_, state => 1, version => now_version() } } @k ]);
		my @answer =
		    $lie == 0 ? reverse(@k)
		  : $lie == 1 ? @k[ 1 .. $#k ]
		  : $lie == 2 ? (@k, map { $_->[0] } fresh_keys(1))
		  :             @k;
		my $m = gen_rows(
			$r,
			table => $lie == 3 ? 'public.hp_x' : $HP,
			columns => $COLS,
			keys => \@answer,
			states => [ 1, 1, 2, 3, 5 ],
			values => sub { victim_value($r, $_[0]) },
			version => $version,
			origin => $origin);
		return (
			[
				[ 'digest', lead_digest($r) ], [ 'bucket_entries', $entries ],
				[ 'fetch_rows', $out->($m) ]
			],
			[2]);
	}
	# P: one to three pages, one of them fuzzed
	my $npages = $r->between(1, 3);
	my $which = $r->below($npages);
	my @pages;
	for my $i (0 .. $npages - 1)
	{
		my $fuzz = $i == $which;
		my $m = gen_entries(
			$r,
			table => $HP,
			with_rows => $fuzz && $lie == 2 ? 0 : 1,
			columns => $COLS,
			nbuckets => $fuzz && $lie == 1 ? 16 : 1,
			more => $fuzz && $lie == 0 ? 1 : 0,
			after_hash => 0,
			keys => [ map { $_->[0] } fresh_keys($r->between($fuzz && $lie == 3 ? 0 : 1, 30)) ],
			states => [ 1, 1, 1, 2, 5 ],
			values => sub { victim_value($r, $_[0]) },
			version => $version,
			origin => $origin);
		push @pages, $fuzz ? $out->($m) : finish_message($m, $z);
	}
	return (
		[ [ 'digest', lead_digest($r, live => 1_000_000) ], [ 'table_pages', undef, \@pages ] ],
		[1]);
}

sub bytea_lit
{
	my ($b) = @_;
	return defined $b ? "'\\x" . unpack('H*', $b) . "'::bytea" : 'NULL';
}

# Queue answers on the fake, dropping what earlier episodes left
# unused; their ids, in order.
sub queue
{
	my (@items) = @_;
	my @rows = map {
		my ($fn, $answer, $pages) = @$_;
		'(' . quote_literal($fn) . ', '
		  . ($fn eq 'changes_since' ? 'NULL' : quote_literal($HP)) . ', '
		  . bytea_lit($answer) . ', '
		  . ($pages ? 'ARRAY[' . join(', ', map { bytea_lit($_) } @$pages) . ']::bytea[]' : 'NULL')
		  . ')'
	} @items;
	return split /\n/, fq('DELETE FROM registry.fake_queue WHERE used_at IS NULL; '
		  . 'INSERT INTO registry.fake_queue (fn, tbl, answer, pages) VALUES '
		  . join(', ', @rows)
		  . ' RETURNING id');
}

# Wait until the queued answers @ids were taken and the worker has made
# a request after the last of them (one request at a time: it has
# handled it), or $secs passed.  The number of them taken.
sub wait_taken
{
	my ($secs, @ids) = @_;
	my $list = join(',', @ids);
	my $taken = 0;
	my $deadline = time() + $secs;
	for (;;)
	{
		my ($unused, $taker, $last) = split /\|/, fq(qq{
SELECT count(*) FILTER (WHERE used_by IS NULL), coalesce(max(used_by), 0),
       (SELECT coalesce(max(id), 0) FROM registry.fake_calls)
FROM registry.fake_queue WHERE id IN ($list)});
		$taken = @ids - $unused;
		return $taken if $unused == 0 && $last > $taker;
		return $taken if time() > $deadline;
		usleep(5_000);
	}
}

# How many of the queued answers @ids were taken
sub count_taken
{
	my (@ids) = @_;
	return 0 unless @ids;
	return fq('SELECT count(*) FROM registry.fake_queue WHERE used_by IS NOT NULL AND id IN ('
		  . join(',', @ids) . ')');
}

# until the victim's round with the fake (if one is running) has ended
sub wait_round_over
{
	my $deadline = time() + 30;
	usleep(5_000)
	  while (vq(q{SELECT state FROM registry.peer_status WHERE peer = 'fake'}) // '') eq
	  'anti-entropy'
	  && time() < $deadline;
}

# ---- checkpoints ----

my $goodn = 0;

# What must hold whatever the fake answered: a list of failures (empty:
# all held), and the worker's peak memory.
sub check_victim
{
	my @fail;
	my $r = vq('SELECT epoch, started_at FROM registry.node') // '';
	push @fail, "the postmaster restarted (registry.node: $r)"
	  if $r ne "$snap->{epoch}|$snap->{started_at}";
	my @crashes = crash_lines(server_log_since($victim, $snap->{log_offset}));
	push @fail, "a process crashed: $crashes[0]" if @crashes;
	my $pid = vq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'registry sync'}) // '';
	push @fail, "the sync worker is not the same process ($wpid -> $pid)" if $pid ne $wpid;
	my $m = worker_memory($wpid);
	if (!$wmem_start->{reset} || !defined $m->{hwm} || !defined $wmem0->{rss})
	{
		push @fail, 'the sync worker\'s peak memory cannot be measured';
	}
	elsif ($m->{hwm} - $wmem0->{rss} >= $MEM_BOUND_KB)
	{
		push @fail, "the sync worker's peak memory grew by $m->{hwm} - $wmem0->{rss} kB";
	}
	my $k = 'good-' . ++$goodn;
	sql($good, "INSERT INTO gt VALUES ('$k', 'from good')");
	push @fail, "a row written on good ($k) did not arrive"
	  unless poll_until(sub { (vq("SELECT count(*) FROM gt WHERE k = '$k'") // '') eq '1' });
	my $v = vq('SELECT * FROM registry.verify()');
	push @fail, 'registry.verify() reports: ' . ($v // '(no answer)') if ($v // 'x') ne '';
	my $g = table_state($victim, 'fz_guard') . ' / ' . versions_state($victim, 'fz_guard');
	push @fail, "fz_guard changed: $guard0 -> $g" if $g ne $guard0;
	return (\@fail, $m->{hwm});
}

# ---- the run ----

my (%fed, %taken, $fed_total, $episodes);
$fed_total = 0;
$episodes = 0;
my $wpeak = 0;

while ($fed_total < $ANSWERS)
{
	# the next $CHECK_EVERY answers: changes first, all queued at once
	# (each after its own position), then the others one episode at a time
	my (@c, @ae);
	my $n = 0;
	while ($n < $CHECK_EVERY && $fed_total + $n < $ANSWERS)
	{
		my $r = fuzz_rng($SEED, 2, $episodes++);
		my $kind = $r->weighted(@KINDS);
		my ($items, $mut) = episode($r, $kind);
		push @{ $kind eq 'C' ? \@c : \@ae }, [ $kind, $items, $mut ];
		$n += @$mut;
	}
	if (@c)
	{
		# and after them a valid position again: an answer that passed as a
		# gap or an epoch change may have moved the worker to another epoch,
		# and the fake's calm answers would be refused until then
		my $s = ($seqbase += 1000);
		my @ids = queue((map { @{ $_->[1] } } @c),
			[ 'changes_since', msg_changes(status => 1, first_seq => $s + 1, last_seq => $s, upto_seq => $s) ]);
		my @mut = map { $ids[ 2 * $_ + 1 ] } 0 .. $#c;
		# a refused changes answer costs a reconnection after 0.5 s
		wait_taken(10 + 2 * @c, @mut, $ids[-1]);
		$fed{C} += @mut;
		# the mutated answers only, not the trailing position
		$taken{C} += count_taken(@mut);
		wait_round_over();
	}
	for my $e (@ae)
	{
		my ($kind, $items, $mut) = @$e;
		my @ids = queue(@$items);
		vq(q{SELECT registry.sync_now('fake', '0s')});
		$fed{$kind} += @$mut;
		$taken{$kind} += wait_taken(10, map { $ids[$_] } @$mut);
		wait_round_over();
	}
	$fed_total += $n;
	# what the fake keeps of answers and calls need not grow with a soak
	fq('DELETE FROM registry.fake_queue WHERE used_at IS NOT NULL; '
		  . 'DELETE FROM registry.fake_calls WHERE id < (SELECT max(id) - 100 FROM registry.fake_calls)');
	my ($fail, $hwm) = check_victim();
	$wpeak = $hwm if ($hwm // 0) > $wpeak;
	note("B: after $fed_total answers, " . elapsed() . ': sync worker ' . memory_parts($wpid));
	my $last = $fed_total >= $ANSWERS;
	if (@$fail || $last)
	{
		ok(!@$fail, "B: after $fed_total answers the victim is sound")
		  or diag("seed $SEED, episodes up to $episodes:\n" . join("\n", @$fail));
	}
	last if @$fail;
}
fq('DELETE FROM registry.fake_queue WHERE used_at IS NULL');

my ($errors, $last_error) = split /\|/,
  vq(q{SELECT errors, coalesce(last_error, '') FROM registry.peer_status WHERE peer = 'fake'}), 2;
note("B: $fed_total mutated or valid answers queued in $episodes episodes, by kind (queued/taken): "
	  . join(', ', map { "$_ " . ($fed{$_} // 0) . '/' . ($taken{$_} // 0) } qw(C D E R P))
	  . "; errors recorded for the fake: $errors; last: $last_error");
note("B: sync worker: VmRSS $wmem0->{rss} kB at the start, VmHWM $wpeak kB at most; "
	  . 'hp holds ' . vq('SELECT count(*) FROM hp') . ' rows; ' . elapsed());
# Most of the mutated answers of every kind must have been taken: each
# had 10 s or more to be, and all are on an idle machine.  A bound of 80%
# leaves room for a loaded machine but fails when the fuzzing shrinks to
# a few answers a kind (a run of 300 feeds some 50 of each).
cmp_ok(($taken{$_} // 0) / $fed{$_}, '>=', 0.8,
	"B: the worker took at least 80% of the mutated answers of kind $_ ("
	  . ($taken{$_} // 0) . " of $fed{$_})")
  for grep { $fed{$_} } qw(C D E R P);

# the checks one by one
assert_survived($victim, $snap, 'B');
check_verify([$victim], 'B');
is(table_state($victim, 'fz_guard') . ' / ' . versions_state($victim, 'fz_guard'),
	$guard0, 'B: the table no crafted answer was about is unchanged');
assert_memory_growth('B: the sync worker', $wmem_start, $MEM_BOUND_KB);
wait_converged([ $victim, $good ], ['gt'], 'B: the victim and good still converge', sync_ok => 0);

$vs->quit;
$fs->quit;
$_->stop for ($victim, $good, $fake);
note('done in ' . elapsed());
done_testing();
