# A fake registry peer for the TAP tests: a plain PostgreSQL instance (the
# registry library is not loaded there) whose schema "registry" has
# plpgsql functions with the signatures the sync worker calls.  Each call
# is recorded and answered with the oldest answer a test queued for that
# function, so a test can feed a real node's sync worker any bytes it
# likes: valid messages to lead it somewhere, then broken or hostile ones.
# When nothing is queued the functions answer like a calm, empty peer, so
# the worker stays connected and quiet between scenarios.
#
# Also here: encoders for the messages of docs/protocol.md section 2, low
# level (one field) and high level (one message kind, every field
# overridable), and checks that a victim node survived what it was fed.
package FakePeer;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Compress::Zlib;
use Time::HiRes qw(usleep time);
use Exporter 'import';

our @EXPORT = qw(
  enc_byte enc_int32 enc_int64 enc_string enc_table enc_row enc_change
  msg msg_changes msg_digest msg_entries msg_rows zlib_parts now_version
  new_fake_peer fake_sql queue_answer queue_pages queue_together set_default_answer
  calls last_call_id answers_pending answer_used clear_queue
  try_sql sync_worker_pid victim_snapshot server_log_since crash_lines
  crashed_since assert_survived worker_memory reset_peak_memory
  memory_start assert_memory_growth
);

# The fake's node name and epoch in the answers it makes up itself.
our $FAKE_NODE  = 'fake';
our $FAKE_EPOCH = 4242;

# ---- low-level encoders (protocol.md 2.3) ----

sub enc_byte
{
	my ($v) = @_;
	return pack('C', $v & 0xff);
}

# int32, big-endian; negative values as two's complement, and values up to
# 2^32-1 as their unsigned bit pattern (to write any 4 bytes)
sub enc_int32
{
	my ($v) = @_;
	return $v < 0 ? pack('l>', $v) : pack('N', $v);
}

# int64, big-endian: anything from -2^63 to 2^64-1
sub enc_int64
{
	my ($v) = @_;
	return $v < 0 ? pack('q>', $v) : pack('Q>', $v);
}

# int32 length then the bytes; undef is NULL (length -1).  len => n writes
# another length than the bytes have (a lying or negative one).
sub enc_string
{
	my ($s, %o) = @_;
	return enc_int32($o{len} // -1) unless defined $s;
	utf8::encode($s) if utf8::is_utf8($s);
	return enc_int32($o{len} // length($s)) . $s;
}

# Table descriptor (2.4): $cols is [[name, type], ...]; either may be undef
# (NULL).  ncols => n writes another column count.
sub enc_table
{
	my ($name, $cols, %o) = @_;
	$cols //= [];
	my $out = enc_string($name) . enc_int32($o{ncols} // scalar @$cols);
	$out .= enc_string($_->[0]) . enc_string($_->[1]) for @$cols;
	return $out;
}

# A version as the registry makes them: milliseconds << 16 | counter, now
# (so that the victim's clock accepts it).
my $version_counter = 0;

sub now_version
{
	$version_counter = ($version_counter + 1) & 0xffff;
	return (int(time() * 1000) << 16) | $version_counter;
}

# Row (2.5).  key (undef = NULL), state (default 1 live), version (default
# now_version()), origin (default the fake's name); states 1, 2 and 5 (too
# large) carry version and origin, any state does with force_version.
# A live row carries nvalues and values: values => [...] (undef elements
# are SQL NULLs), or values absent/undef for nvalues -1 (no values);
# nvalues => n writes another count.  extra => bytes is appended.
sub enc_row
{
	my (%a) = @_;
	my $state = $a{state} // 1;
	my $out = enc_string($a{key}) . enc_byte($state);
	if ($state == 1 || $state == 2 || $state == 5 || $a{force_version})
	{
		$out .= enc_int64($a{version} // now_version());
		$out .= enc_string(exists $a{origin} ? $a{origin} : $FAKE_NODE);
	}
	if ($state == 1 || $a{force_values})
	{
		my $vals = $a{values};
		$out .= enc_int32($a{nvalues} // (defined $vals ? scalar @$vals : -1));
		$out .= enc_string($_) for @{ $vals // [] };
	}
	return $out . ($a{extra} // '');
}

# Change of a changes answer (2.6): seq, table (index), key, version,
# origin, op ('i', 'u', 'd', 'r'), then row => {enc_row args} or the row's
# bytes when the answer has rows.  The change's key, version and origin
# default to the row's.
sub enc_change
{
	my (%a) = @_;
	my $row = $a{row};
	my %r = ref $row eq 'HASH' ? %$row : ();
	$r{version} //= now_version() if ref $row eq 'HASH';
	my $out =
		enc_int64($a{seq} // 1)
	  . enc_int32($a{table} // 0)
	  . enc_string(exists $a{key} ? $a{key} : $r{key} // '')
	  . enc_int64($a{version} // $r{version} // now_version())
	  . enc_string(exists $a{origin} ? $a{origin} : $r{origin} // $FAKE_NODE)
	  . (length($a{op} // 'i') == 1 ? ($a{op} // 'i') : enc_byte($a{op}));
	$out .= ref $row eq 'HASH' ? enc_row(%r) : $row if defined $row;
	return $out;
}

# ---- zlib ----

# A zlib stream of the concatenation of @parts, each a string or
# [zeros => n] for n zero bytes, made without ever holding the inflated
# data: a block of zeros compressed once is repeated (every block ends
# with a full flush, so none refers to an earlier one) and the Adler-32
# checksum of the zeros is computed arithmetically.  Makes the 1 GB
# "bombs" in a few milliseconds.
sub _raw_blocks
{
	my ($bytes) = @_;
	my ($d) = deflateInit(-Level => Z_BEST_COMPRESSION);
	my ($o1) = $d->deflate($bytes);
	my ($o2) = $d->flush(Z_FULL_FLUSH);
	my $s = $o1 . $o2;
	return (substr($s, 0, 2), substr($s, 2));
}

sub zlib_parts
{
	my @parts = @_;
	my ($out) = _raw_blocks('');
	my $adler = adler32('');
	my $chunk = 1 << 20;
	my $full;
	for my $p (@parts)
	{
		if (ref $p)
		{
			my $n = $p->[1];
			(undef, $full) = _raw_blocks("\0" x $chunk) unless defined $full;
			my $k = int($n / $chunk);
			$out .= $full x $k;
			my $r = $n - $k * $chunk;
			$out .= (_raw_blocks("\0" x $r))[1] if $r > 0;
			my $sa = $adler & 0xffff;
			my $sb = ($adler >> 16) & 0xffff;
			$sb = ($sb + ($n % 65521) * $sa) % 65521;
			$adler = ($sb << 16) | $sa;
		}
		else
		{
			$out .= (_raw_blocks($p))[1] if length $p;
			$adler = adler32($p, $adler);
		}
	}
	# an empty final block (fixed Huffman), then the checksum
	return $out . "\x03\x00" . pack('N', $adler);
}

# ---- messages ----

# The options every message builder passes on to msg()
my @MSG_OPTS = qw(compress flags rawlen format magic kind trailing body
  truncate extra);

sub _msg_opts
{
	my ($a) = @_;
	return map { exists $a->{$_} ? ($_ => $a->{$_}) : () } @MSG_OPTS;
}

# Header (2.1) and payload.  Options, to break messages on purpose:
#   extra => bytes     appended to the payload (counted in the raw length)
#   truncate => n      payload cut to n bytes (n < 0: n bytes dropped), raw
#                      length computed after the cut
#   compress => 1      payload zlib-compressed, flag bit 1 set
#   flags, rawlen, format, magic, kind   header fields as given
#   body => bytes      the bytes after the header, whatever the payload
#   trailing => bytes  appended after the (compressed) payload, not counted
sub msg
{
	my ($kind, $payload, %o) = @_;
	$payload //= '';
	$payload .= $o{extra} if defined $o{extra};
	if (defined $o{truncate})
	{
		my $n = $o{truncate};
		$n = length($payload) + $n if $n < 0;
		$n = 0 if $n < 0;
		$payload = substr($payload, 0, $n);
	}
	my $body  = $payload;
	my $flags = 0;
	if ($o{compress})
	{
		$body  = compress($payload);
		$flags = 1;
	}
	$body = $o{body} if defined $o{body};
	$flags = $o{flags} if defined $o{flags};
	$kind = $o{kind} if defined $o{kind};
	my $rawlen = $o{rawlen} // length($payload);
	return ($o{magic} // 'R')
	  . enc_byte($o{format} // 1)
	  . (length($kind) == 1 ? $kind : enc_byte($kind))
	  . enc_byte($flags)
	  . pack('N', $rawlen)
	  . $body
	  . ($o{trailing} // '');
}

# A table descriptor from [name, cols] or ready-made bytes
sub _table
{
	my ($t) = @_;
	return ref $t eq 'ARRAY' ? enc_table(@$t) : $t;
}

# Kind C (2.6).  node, epoch, first_seq, last_seq, upto_seq (default
# last_seq), status, with_rows (default 1), tables => [[name, cols], ...]
# or encoded descriptors, ntables, changes => [{enc_change args} or
# bytes], nchanges; then msg() options.
sub msg_changes
{
	my (%a) = @_;
	my $tables  = $a{tables}  // [];
	my $changes = $a{changes} // [];
	my $last    = $a{last_seq} // 0;
	my $p =
		enc_string(exists $a{node} ? $a{node} : $FAKE_NODE)
	  . enc_int64($a{epoch} // $FAKE_EPOCH)
	  . enc_int64($a{first_seq} // 1)
	  . enc_int64($last)
	  . enc_int64($a{upto_seq} // $last)
	  . enc_byte($a{status} // 0)
	  . enc_byte($a{with_rows} // 1)
	  . enc_int32($a{ntables} // scalar @$tables);
	$p .= _table($_) for @$tables;
	$p .= enc_int32($a{nchanges} // scalar @$changes);
	$p .= ref $_ eq 'HASH' ? enc_change(%$_) : $_ for @$changes;
	return msg('C', $p, _msg_opts(\%a));
}

# Kind D (2.7).  node, table, nbuckets (16), root, live, tombstones, lo,
# width, digests => [...], n.
sub msg_digest
{
	my (%a) = @_;
	my $digests = $a{digests} // [];
	my $p =
		enc_string(exists $a{node} ? $a{node} : $FAKE_NODE)
	  . enc_string($a{table})
	  . enc_int32($a{nbuckets} // 16)
	  . enc_int64($a{root} // 0)
	  . enc_int64($a{live} // 0)
	  . enc_int64($a{tombstones} // 0)
	  . enc_int32($a{lo} // 0)
	  . enc_int32($a{width} // 0)
	  . enc_int32($a{n} // scalar @$digests);
	$p .= enc_int64($_) for @$digests;
	return msg('D', $p, _msg_opts(\%a));
}

# Kind E (2.8).  table (name), columns => [[name, type], ...], ncols,
# nbuckets (16), with_rows (default: 1 if there are columns), rows =>
# [{enc_row args} or bytes], n, more (0), after_hash (int4 form; written
# when more is set, or when given).
sub msg_entries
{
	my (%a) = @_;
	my $cols = $a{columns} // [];
	my $rows = $a{rows}    // [];
	my $more = $a{more}    // 0;
	my $p =
		enc_table($a{table}, $cols,
		defined $a{ncols} ? (ncols => $a{ncols}) : ())
	  . enc_int32($a{nbuckets} // 16)
	  . enc_byte($a{with_rows} // (@$cols ? 1 : 0))
	  . enc_int32($a{n} // scalar @$rows);
	$p .= ref $_ eq 'HASH' ? enc_row(%$_) : $_ for @$rows;
	$p .= enc_byte($more);
	$p .= enc_int32($a{after_hash} // 0) if $more || defined $a{after_hash};
	return msg('E', $p, _msg_opts(\%a));
}

# Kind R (2.9).  table, columns, ncols, rows, n.
sub msg_rows
{
	my (%a) = @_;
	my $rows = $a{rows} // [];
	my $p =
		enc_table($a{table}, $a{columns} // [],
		defined $a{ncols} ? (ncols => $a{ncols}) : ())
	  . enc_int32($a{n} // scalar @$rows);
	$p .= ref $_ eq 'HASH' ? enc_row(%$_) : $_ for @$rows;
	return msg('R', $p, _msg_opts(\%a));
}

# ---- the fake peer ----

# Everything the fake needs, in its "postgres" database.  The serving
# functions exist with the signatures of the current sync worker and of
# the one gaining a trailing max_bytes argument; both record the call
# (with the number of arguments it came with) and answer the same way.
my $FAKE_SQL = <<'SQL';
CREATE SCHEMA registry;

CREATE TABLE registry.fake_config (node_name text NOT NULL, epoch bigint NOT NULL);

CREATE TABLE registry.fake_calls (
    id bigserial PRIMARY KEY,
    fn text NOT NULL,
    args text,
    called_at timestamptz NOT NULL DEFAULT clock_timestamp());

-- answers a test queued: used once each, oldest first; tbl, when set,
-- keeps an answer for the requests about that table
CREATE TABLE registry.fake_queue (
    id bigserial PRIMARY KEY,
    fn text NOT NULL,
    tbl text,
    answer bytea,
    pages bytea[],
    queued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    used_at timestamptz,
    used_by bigint);

-- "always" answers, used when nothing is queued; tbl '' = any table
CREATE TABLE registry.fake_default (
    fn text NOT NULL,
    tbl text NOT NULL DEFAULT '',
    answer bytea,
    pages bytea[],
    PRIMARY KEY (fn, tbl));

CREATE FUNCTION registry.fake_record(p_fn text, p_args text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    call_id bigint;
BEGIN
    INSERT INTO registry.fake_calls (fn, args) VALUES (p_fn, p_args)
    RETURNING id INTO call_id;
    RETURN call_id;
END $$;

-- The oldest queued answer for fn (and table), marked used by p_call.
-- (hit, not "found": that would shadow plpgsql's FOUND)
CREATE FUNCTION registry.fake_queued(p_fn text, p_tbl text, p_call bigint,
    OUT hit boolean, OUT answer bytea, OUT pages bytea[])
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry.fake_queue q SET used_at = clock_timestamp(), used_by = p_call
     WHERE q.id = (SELECT id FROM registry.fake_queue
                    WHERE fn = p_fn AND used_at IS NULL
                      AND (tbl IS NULL OR tbl = p_tbl)
                    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING q.answer, q.pages INTO answer, pages;
    hit := FOUND;
END $$;

-- The "always" answer of fn for this table, or for any
CREATE FUNCTION registry.fake_always(p_fn text, p_tbl text,
    OUT hit boolean, OUT answer bytea, OUT pages bytea[])
LANGUAGE plpgsql AS $$
BEGIN
    SELECT d.answer, d.pages INTO answer, pages
      FROM registry.fake_default d
     WHERE d.fn = p_fn AND d.tbl IN (coalesce(p_tbl, ''), '')
     ORDER BY d.tbl DESC LIMIT 1;
    hit := FOUND;
END $$;

-- queued, else always
CREATE FUNCTION registry.fake_take(p_fn text, p_tbl text, p_call bigint,
    OUT hit boolean, OUT answer bytea, OUT pages bytea[])
LANGUAGE plpgsql AS $$
BEGIN
    SELECT * INTO hit, answer, pages FROM registry.fake_queued(p_fn, p_tbl, p_call);
    IF NOT hit THEN
        SELECT * INTO hit, answer, pages FROM registry.fake_always(p_fn, p_tbl);
    END IF;
END $$;

CREATE FUNCTION registry.fake_str(s text) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN s IS NULL THEN int4send(-1)
                ELSE int4send(octet_length(s)) || convert_to(s, current_setting('server_encoding')) END
$$;

CREATE FUNCTION registry.fake_msg(kind text, payload bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT decode('5201' || encode(convert_to(kind, 'UTF8'), 'hex') || '00', 'hex')
           || int4send(octet_length(payload)) || payload
$$;

-- ok, nothing new: first_seq 1, last_seq = upto_seq = after_seq
CREATE FUNCTION registry.fake_changes_answer(after_seq bigint) RETURNS bytea
LANGUAGE plpgsql AS $$
DECLARE
    c registry.fake_config;
    s bigint := greatest(coalesce(after_seq, 0), 0);
BEGIN
    SELECT * INTO c FROM registry.fake_config;
    RETURN registry.fake_msg('C',
        registry.fake_str(c.node_name) || int8send(c.epoch) || int8send(1)
        || int8send(s) || int8send(s) || '\x00'::bytea || '\x01'::bytea
        || int4send(0) || int4send(0));
END $$;

CREATE FUNCTION registry.fake_changes(after_seq bigint, max_changes int,
    with_rows boolean, epoch bigint, exclude_origin text, wait_ms int,
    max_bytes int, nargs int) RETURNS bytea
LANGUAGE plpgsql AS $$
DECLARE
    call_id bigint := registry.fake_record('changes_since',
        format('after_seq=%s max_changes=%s with_rows=%s epoch=%s exclude_origin=%s wait_ms=%s max_bytes=%s nargs=%s',
               coalesce(after_seq::text, 'NULL'), coalesce(max_changes::text, 'NULL'),
               coalesce(with_rows::text, 'NULL'), coalesce(epoch::text, 'NULL'),
               coalesce(exclude_origin, 'NULL'), coalesce(wait_ms::text, 'NULL'),
               coalesce(max_bytes::text, 'NULL'), nargs));
    deadline timestamptz := clock_timestamp()
        + make_interval(secs => least(greatest(coalesce(wait_ms, 0), 0), 200) / 1000.0);
    q record;
BEGIN
    -- a long poll: an answer queued meanwhile is taken at once
    LOOP
        SELECT * INTO q FROM registry.fake_queued('changes_since', NULL, call_id);
        IF q.hit THEN
            RETURN q.answer;
        END IF;
        EXIT WHEN clock_timestamp() >= deadline;
        PERFORM pg_sleep(0.02);
    END LOOP;
    SELECT * INTO q FROM registry.fake_always('changes_since', NULL);
    IF q.hit THEN
        RETURN q.answer;
    END IF;
    RETURN registry.fake_changes_answer(after_seq);
END $$;

CREATE FUNCTION registry.changes_since(bigint, int, boolean, bigint, text, int)
RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN
    RETURN registry.fake_changes($1, $2, $3, $4, $5, $6, NULL, 6);
END $$;

CREATE FUNCTION registry.changes_since(bigint, int, boolean, bigint, text, int, int)
RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN
    RETURN registry.fake_changes($1, $2, $3, $4, $5, $6, $7, 7);
END $$;

CREATE FUNCTION registry.changes_since(bigint, int, boolean, bigint, text, int, int, text[])
RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN
    RETURN registry.fake_changes($1, $2, $3, $4, $5, $6, $7, 8);
END $$;

-- the asked table, at the asked granularity, empty: root 0, n digests of 0
CREATE FUNCTION registry.digest(tbl text, nbuckets int, lo int, width int, n int)
RETURNS bytea LANGUAGE plpgsql AS $$
DECLARE
    call_id bigint := registry.fake_record('digest',
        format('tbl=%s nbuckets=%s lo=%s width=%s n=%s', coalesce(tbl, 'NULL'),
               coalesce(nbuckets::text, 'NULL'), coalesce(lo::text, 'NULL'),
               coalesce(width::text, 'NULL'), coalesce(n::text, 'NULL')));
    q record;
    c registry.fake_config;
    nd int := least(greatest(coalesce(n, 0), 0), 1000000);
BEGIN
    SELECT * INTO q FROM registry.fake_take('digest', tbl, call_id);
    IF q.hit THEN
        RETURN q.answer;
    END IF;
    SELECT * INTO c FROM registry.fake_config;
    RETURN registry.fake_msg('D',
        registry.fake_str(c.node_name) || registry.fake_str(tbl)
        || int4send(CASE WHEN coalesce(nbuckets, 0) = 0 THEN 4096 ELSE nbuckets END)
        || int8send(0) || int8send(0) || int8send(0)
        || int4send(coalesce(lo, 0)) || int4send(coalesce(width, 0)) || int4send(nd)
        || decode(repeat('00', 8 * nd), 'hex'));
END $$;

-- no entries, no more
CREATE FUNCTION registry.fake_entries(tbl text, nbuckets int, buckets int[],
    with_rows boolean, after_hash int, max_entries int, max_bytes int, nargs int)
RETURNS bytea LANGUAGE plpgsql AS $$
DECLARE
    call_id bigint := registry.fake_record('bucket_entries',
        format('tbl=%s nbuckets=%s buckets=%s with_rows=%s after_hash=%s max_entries=%s max_bytes=%s nargs=%s',
               coalesce(tbl, 'NULL'), coalesce(nbuckets::text, 'NULL'),
               coalesce(buckets::text, 'NULL'), coalesce(with_rows::text, 'NULL'),
               coalesce(after_hash::text, 'NULL'), coalesce(max_entries::text, 'NULL'),
               coalesce(max_bytes::text, 'NULL'), nargs));
    q record;
    nb int := CASE WHEN nbuckets > 0 AND (nbuckets & (nbuckets - 1)) = 0 THEN nbuckets ELSE 1 END;
BEGIN
    SELECT * INTO q FROM registry.fake_take('bucket_entries', tbl, call_id);
    IF q.hit THEN
        RETURN q.answer;
    END IF;
    RETURN registry.fake_msg('E',
        registry.fake_str(tbl) || int4send(0) || int4send(nb) || '\x00'::bytea
        || int4send(0) || '\x00'::bytea);
END $$;

CREATE FUNCTION registry.bucket_entries(text, int, int[], boolean, int, int)
RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN
    RETURN registry.fake_entries($1, $2, $3, $4, $5, $6, NULL, 6);
END $$;

CREATE FUNCTION registry.bucket_entries(text, int, int[], boolean, int, int, int)
RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN
    RETURN registry.fake_entries($1, $2, $3, $4, $5, $6, $7, 7);
END $$;

-- nothing queued: an error answer
CREATE FUNCTION registry.fake_fetch(tbl text, keys text[], max_bytes int, nargs int)
RETURNS bytea LANGUAGE plpgsql AS $$
DECLARE
    call_id bigint := registry.fake_record('fetch_rows',
        format('tbl=%s nkeys=%s keys=%s max_bytes=%s nargs=%s', coalesce(tbl, 'NULL'),
               coalesce(cardinality(keys)::text, 'NULL'),
               left(coalesce(keys::text, 'NULL'), 200),
               coalesce(max_bytes::text, 'NULL'), nargs));
    q record;
BEGIN
    SELECT * INTO q FROM registry.fake_take('fetch_rows', tbl, call_id);
    IF q.hit THEN
        RETURN q.answer;
    END IF;
    RAISE EXCEPTION 'fake peer: no fetch_rows answer queued';
END $$;

CREATE FUNCTION registry.fetch_rows(text, text[]) RETURNS bytea
LANGUAGE plpgsql AS $$
BEGIN
    RETURN registry.fake_fetch($1, $2, NULL, 2);
END $$;

CREATE FUNCTION registry.fetch_rows(text, text[], int) RETURNS bytea
LANGUAGE plpgsql AS $$
BEGIN
    RETURN registry.fake_fetch($1, $2, $3, 3);
END $$;

-- nothing queued: no pages
CREATE FUNCTION registry.fake_pages(tbl text, page_rows int, max_bytes int, nargs int)
RETURNS SETOF bytea LANGUAGE plpgsql AS $$
DECLARE
    call_id bigint := registry.fake_record('table_pages',
        format('tbl=%s page_rows=%s max_bytes=%s nargs=%s', coalesce(tbl, 'NULL'),
               coalesce(page_rows::text, 'NULL'), coalesce(max_bytes::text, 'NULL'), nargs));
    q record;
BEGIN
    SELECT * INTO q FROM registry.fake_take('table_pages', tbl, call_id);
    IF q.hit AND q.pages IS NOT NULL THEN
        RETURN QUERY SELECT p FROM unnest(q.pages) WITH ORDINALITY AS u(p, i) ORDER BY i;
    END IF;
END $$;

CREATE FUNCTION registry.table_pages(text, int) RETURNS SETOF bytea
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM registry.fake_pages($1, $2, NULL, 2);
END $$;

CREATE FUNCTION registry.table_pages(text, int, int) RETURNS SETOF bytea
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM registry.fake_pages($1, $2, $3, 3);
END $$;
SQL

# A fake peer named $name, started.  Its answers name it $FAKE_NODE
# unless node_name => ... is given.
sub new_fake_peer
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	# a backend whose client went away (a victim that crashed mid-request)
	# must not go on taking queued answers in its long poll
	$node->append_conf('postgresql.conf',
		"client_connection_check_interval = '100ms'\n");
	$node->start;
	$node->safe_psql('postgres', $FAKE_SQL);
	$node->safe_psql('postgres',
		    'INSERT INTO registry.fake_config VALUES ('
		  . _quote($opts{node_name} // $FAKE_NODE) . ', '
		  . ($opts{epoch} // $FAKE_EPOCH)
		  . ')');
	return $node;
}

sub _quote
{
	my ($s) = @_;
	return 'NULL' unless defined $s;
	$s =~ s/'/''/g;
	return "'$s'";
}

sub fake_sql
{
	my ($fake, $query) = @_;
	return $fake->safe_psql('postgres', $query);
}

# Bytes go to the fake through a file it reads (pg_read_binary_file, as
# superuser): no size limit, no quoting.
my $answer_file = 0;

sub _bytes_expr
{
	my ($fake, $bytes) = @_;
	return 'NULL' unless defined $bytes;
	my $dir = $fake->basedir . '/answers';
	mkdir $dir unless -d $dir;
	my $path = sprintf('%s/answer-%d.bin', $dir, ++$answer_file);
	open my $fh, '>:raw', $path or die "cannot write $path: $!";
	print $fh $bytes;
	close $fh;
	return 'pg_read_binary_file(' . _quote($path) . ')';
}

# Inside queue_together(): the INSERTs of the answers queued so far, run
# together when it ends.
our $BATCH;

# Run one INSERT ... RETURNING id into the queue (its id), or, inside
# queue_together(), keep it for later (a placeholder for its id).
sub _queue_insert
{
	my ($fake, $sql) = @_;
	return fake_sql($fake, $sql) unless $BATCH;
	die "queue_together: every answer of a batch goes to the fake it was started for\n"
	  unless $fake == $BATCH->{fake};
	push @{ $BATCH->{sql} }, $sql;
	return "batch:$#{ $BATCH->{sql} }";
}

# Queue one answer (undef: SQL NULL) for function $fn ('changes_since',
# 'digest', 'bucket_entries', 'fetch_rows'); with tbl => name it is kept
# for a request about that table.  Returns its id.
sub queue_answer
{
	my ($fake, $fn, $bytes, %o) = @_;
	return _queue_insert($fake,
		    'INSERT INTO registry.fake_queue (fn, tbl, answer) VALUES ('
		  . _quote($fn) . ', '
		  . _quote($o{tbl}) . ', '
		  . _bytes_expr($fake, $bytes)
		  . ') RETURNING id');
}

# Queue the pages of one table_pages request (undef elements: NULL rows).
sub queue_pages
{
	my ($fake, $pages, %o) = @_;
	my $arr = 'ARRAY[' . join(', ', map { _bytes_expr($fake, $_) } @$pages) . ']::bytea[]';
	return _queue_insert($fake,
		    "INSERT INTO registry.fake_queue (fn, tbl, pages) VALUES ('table_pages', "
		  . _quote($o{tbl})
		  . ", $arr) RETURNING id");
}

# Run $code, which queues answers (queue_answer, queue_pages) and returns
# a list of their ids, and queue them all in one transaction: the sync
# worker sees none of them or all.  Answers that lead one another (a
# digest, then the entries or pages it leads to, then rows) queued one
# statement at a time race with the worker's rounds (every
# antientropy_interval, not only when asked): a round could take the
# first and make the next request before the next answer was queued,
# get the calm default instead, and leave the crafted one queued for a
# request that never comes.  Returns $code's list with the real ids.
sub queue_together
{
	my ($fake, $code) = @_;
	die "queue_together: not nested\n" if $BATCH;
	my @ret;
	my @sql;
	{
		local $BATCH = { fake => $fake, sql => [] };
		@ret = $code->();
		@sql = @{ $BATCH->{sql} };
	}
	return @ret unless @sql;
	my @ids = split /\n/,
	  fake_sql($fake, join("\n", 'BEGIN;', (map { "$_;" } @sql), 'COMMIT;'));
	die 'queue_together: ' . scalar(@sql) . ' answers queued, ' . scalar(@ids) . " ids returned\n"
	  unless @ids == @sql;
	return map { defined $_ && /^batch:(\d+)$/ ? $ids[$1] : $_ } @ret;
}

# The answer $fn gives whenever nothing is queued (for table tbl => name,
# or any); $bytes undef removes it.
sub set_default_answer
{
	my ($fake, $fn, $bytes, %o) = @_;
	my $tbl = _quote($o{tbl} // '');
	fake_sql($fake,
		"DELETE FROM registry.fake_default WHERE fn = " . _quote($fn) . " AND tbl = $tbl");
	return unless defined $bytes;
	fake_sql($fake,
		    'INSERT INTO registry.fake_default (fn, tbl, answer) VALUES ('
		  . _quote($fn)
		  . ", $tbl, "
		  . _bytes_expr($fake, $bytes)
		  . ')');
}

# How many calls of $fn (of any function if undef) the fake received.
sub calls
{
	my ($fake, $fn) = @_;
	return fake_sql($fake,
		'SELECT count(*) FROM registry.fake_calls'
		  . (defined $fn ? ' WHERE fn = ' . _quote($fn) : ''));
}

sub last_call_id
{
	my ($fake) = @_;
	return fake_sql($fake, 'SELECT coalesce(max(id), 0) FROM registry.fake_calls');
}

sub answers_pending
{
	my ($fake) = @_;
	return fake_sql($fake,
		'SELECT count(*) FROM registry.fake_queue WHERE used_at IS NULL');
}

# The id of the call that took queued answer $id, or '' while unused
sub answer_used
{
	my ($fake, $id) = @_;
	return fake_sql($fake,
		"SELECT coalesce(used_by::text, '') FROM registry.fake_queue WHERE id = $id");
}

# Drop what is queued and not taken, and every "always" answer.
sub clear_queue
{
	my ($fake) = @_;
	fake_sql($fake,
		'DELETE FROM registry.fake_queue WHERE used_at IS NULL; DELETE FROM registry.fake_default');
}

# ---- the victim ----

# A query that may fail (a server restarting after a crash): its output,
# or undef.
sub try_sql
{
	my ($node, $query) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql(
		'postgres', $query,
		stdout => \$out,
		stderr => \$err,
		on_error_stop => 1);
	return $rc == 0 ? $out : undef;
}

sub sync_worker_pid
{
	my ($node) = @_;
	my $pid = try_sql($node,
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'registry sync'");
	return defined $pid && $pid =~ /^(\d+)$/ ? $1 : undef;
}

# What must not change while a node is fed hostile answers: the
# postmaster's lifetime (shared memory, re-initialised with a new epoch
# after a crash), the sync worker, and where the server log stood.
sub victim_snapshot
{
	my ($node) = @_;
	my $r = try_sql($node, 'SELECT epoch, started_at FROM registry.node') // '';
	my ($epoch, $started) = split /\|/, $r;
	return {
		epoch => $epoch,
		started_at => $started,
		pid => sync_worker_pid($node),
		log_offset => -s $node->logfile // 0,
	};
}

sub server_log_since
{
	my ($node, $offset) = @_;
	open my $fh, '<:raw', $node->logfile or return '';
	seek($fh, $offset, 0);
	local $/;
	my $s = <$fh> // '';
	close $fh;
	return $s;
}

# The lines of a server log that say a process crashed or died
my $CRASH_RE = qr/terminated by signal|server process .* was terminated|TRAP:|"registry sync" \(PID \d+\) exited with exit code [1-9]|PANIC:/;

sub crash_lines
{
	my ($log) = @_;
	return grep { $_ =~ $CRASH_RE } split /\n/, $log;
}

sub crashed_since
{
	my ($node, $snap) = @_;
	return scalar crash_lines(server_log_since($node, $snap->{log_offset}));
}

# The checks after an attack: same postmaster (epoch and started_at of
# registry.node), no crash in the log written since the snapshot, and the
# same sync worker still running (a new one with restart_ok => 1).
# Waits for the node to answer at all (a crash restarts it).  Returns true
# when every check passed.
sub assert_survived
{
	my ($node, $snap, $label, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $r;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	until (defined($r = try_sql($node, 'SELECT epoch, started_at FROM registry.node')))
	{
		last if time() > $deadline;
		usleep(100_000);
	}
	my ($epoch, $started) = split /\|/, $r // '';
	my $ok = ok(
		defined $r
		  && ($epoch // '') eq ($snap->{epoch} // '')
		  && ($started // '') eq ($snap->{started_at} // ''),
		"$label: the postmaster was not restarted (registry.node epoch and started_at unchanged)");
	diag("$label: epoch $snap->{epoch} -> " . ($epoch // 'unreachable')
		  . ", started_at $snap->{started_at} -> " . ($started // 'unreachable'))
	  unless $ok;

	my @bad = crash_lines(server_log_since($node, $snap->{log_offset}));
	$ok &= ok(!@bad, "$label: no process crashed or died (server log)");
	diag("$label: $_") for @bad[ 0 .. ($#bad < 4 ? $#bad : 4) ];

	my $pid;
	$deadline = time() + 30;
	until (defined($pid = sync_worker_pid($node)))
	{
		last if time() > $deadline;
		usleep(100_000);
	}
	if ($o{restart_ok})
	{
		$ok &= ok(defined $pid, "$label: a registry sync worker is running");
	}
	else
	{
		$ok &= ok(defined $pid && defined $snap->{pid} && $pid == $snap->{pid},
			"$label: the registry sync worker is still running (same pid)");
		diag("$label: sync worker pid " . ($snap->{pid} // 'none') . ' -> ' . ($pid // 'none'))
		  unless defined $pid && defined $snap->{pid} && $pid == $snap->{pid};
	}
	return $ok;
}

# Memory of a process from /proc/<pid>/status, in kB: rss (VmRSS), hwm
# (VmHWM, the peak of rss) and peak (VmPeak, of the address space); {} if
# it cannot be read (not Linux, process gone).
sub worker_memory
{
	my ($pid) = @_;
	my %m;
	my $fh;
	return \%m unless defined $pid && open($fh, '<', "/proc/$pid/status");
	while (<$fh>)
	{
		$m{rss}  = $1 if /^VmRSS:\s+(\d+)/;
		$m{hwm}  = $1 if /^VmHWM:\s+(\d+)/;
		$m{peak} = $1 if /^VmPeak:\s+(\d+)/;
	}
	close $fh;
	return \%m;
}

# Start measuring VmHWM afresh (Linux: "5" to clear_refs resets it); false
# if not possible.
sub reset_peak_memory
{
	my ($pid) = @_;
	open my $fh, '>', "/proc/$pid/clear_refs" or return 0;
	my $ok = print $fh "5";
	close $fh or return 0;
	return $ok;
}

# Before something whose memory is to be bounded: the process's resident
# size now, its peak measured from now.
sub memory_start
{
	my ($pid) = @_;
	my $reset = reset_peak_memory($pid);
	return { pid => $pid, reset => $reset, m0 => worker_memory($pid) };
}

# The process's peak resident size since memory_start() grew by less than
# $bound_kb.  Fails if the memory cannot be read or the peak could not be
# measured from the start (a spike since freed would go unseen).
sub assert_memory_growth
{
	my ($label, $start, $bound_kb) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $m = worker_memory($start->{pid});
	my $m0 = $start->{m0};
	unless ($start->{reset} && defined $m->{hwm} && defined $m0->{rss})
	{
		fail("$label: the process's peak memory could be measured");
		return;
	}
	note("$label: memory: VmRSS $m0->{rss} kB before, VmRSS $m->{rss} kB and VmHWM $m->{hwm} kB after");
	cmp_ok($m->{hwm} - $m0->{rss}, '<', $bound_kb,
		sprintf('%s: the peak resident memory grew by less than %d MB', $label, $bound_kb / 1024));
}

1;
