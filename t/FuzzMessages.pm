# Structured fuzzing of registry messages for t/025_fuzz.pl: a seeded
# random generator, generators of valid messages of every kind
# (docs/protocol.md section 2) built with the encoders of t/FakePeer.pm,
# a map of a valid message's fields (where each length, count, integer
# and flag byte lies), mutators that break messages the ways a hostile
# or broken peer would, and a persistent psql session that stays out of
# the test log.
#
# Everything random comes from FuzzMessages::Rng, seeded explicitly (no
# use of Perl's rand): the same seed gives the same inputs on any machine
# with a 64-bit Perl and the same zlib (compressed bytes depend on its
# version), so that a failure is replayed by its seed and index.
package FuzzMessages;

use strict;
use warnings;
no warnings 'portable';    # 64-bit constants: this needs a 64-bit Perl
use Compress::Zlib;
use IPC::Run;
use FakePeer;
use Exporter 'import';

our @EXPORT = qw(
  fuzz_rng gen_changes gen_digest gen_entries gen_rows gen_definitions gen_any
  msg_definitions
  field_map mutate finish_message zdeflate hexdump
  rand_key rand_value rand_node
);

# ---- the random generator ----

# xorshift64 on Perl's unsigned 64-bit integers; $seed and any number of
# stream numbers are folded into the state, so fuzz_rng($seed, $i) gives
# input $i's own stream, independent of the inputs before it.
sub fuzz_rng
{
	my ($seed, @streams) = @_;
	my $s = 0x9E3779B97F4A7C15;
	for my $v ($seed, @streams)
	{
		$s ^= $v;
		$s = 0x2545F4914F6CDD1D if $s == 0;
		my $r = bless { s => $s }, 'FuzzMessages::Rng';
		$r->next64 for 1 .. 12;
		$s = $r->{s};
	}
	return bless { s => $s }, 'FuzzMessages::Rng';
}

package FuzzMessages::Rng;

sub next64
{
	my ($r) = @_;
	my $x = $r->{s};
	$x ^= $x << 13;    # unsigned 64-bit: bits shifted out are lost
	$x ^= $x >> 7;
	$x ^= $x << 17;
	return $r->{s} = $x;
}

sub next32 { return $_[0]->next64 >> 32; }

# an integer in [0, n)
sub below
{
	my ($r, $n) = @_;
	return 0 if $n <= 1;
	return int($r->next32 * $n / 4294967296);
}

# an integer in [lo, hi]
sub between
{
	my ($r, $lo, $hi) = @_;
	return $lo + $r->below($hi - $lo + 1);
}

sub chance
{
	my ($r, $p) = @_;
	return $r->next32 < $p * 4294967296;
}

sub pick
{
	my ($r, @a) = @_;
	return $a[ $r->below(scalar @a) ];
}

# pick among [weight, value] pairs
sub weighted
{
	my ($r, @pairs) = @_;
	my $total = 0;
	$total += $_->[0] for @pairs;
	my $x = $r->below($total);
	my $v = $pairs[-1][1];
	for my $p (@pairs)
	{
		if ($x < $p->[0])
		{
			$v = $p->[1];
			last;
		}
		$x -= $p->[0];
	}
	# a code reference is called: values that cost something to make are
	# made only when picked
	return ref $v eq 'CODE' ? $v->() : $v;
}

sub bytes
{
	my ($r, $n) = @_;
	return join('', map { chr($r->next32 & 0xff) } 1 .. $n);
}

package FuzzMessages;

# ---- names, keys and values (bytes: UTF-8 already encoded) ----

my @NODE_NAMES = ('fake', 'n1', 'node-2', 'db.example.org:5432', 'x@y_z', 'a' x 63);

sub rand_node
{
	my ($r) = @_;
	return $r->pick(@NODE_NAMES);
}

sub rand_key
{
	my ($r) = @_;
	my $n = $r->below(1_000_000);
	return $r->weighted(
		[ 50, "k$n" ],
		[ 8,  "key with spaces $n" ],
		[ 6,  "q\"uote\\back$n" ],
		[ 8,  "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87-$n" ],    # "ключ-"
		[ 4,  "\xf0\x9f\x94\x91$n" ],                    # an emoji
		[ 6,  "($n,\"x y\")" ],
		[ 3,  '' ],
		[ 6,  sub { 'L' x (1 + $r->below(300)) . $n } ],
		[ 1,  sub { 'M' x 4096 } ],                      # the longest a key can be
	);
}

sub rand_value
{
	my ($r) = @_;
	my $n = $r->below(100_000);
	return $r->weighted(
		[ 10, undef ],
		[ 5,  '' ],
		[ 30, "$n" ],
		[ 15, "value $n" ],
		[ 10, qq({"a": [1, 2, {"b": "$n"}], "c": null}) ],
		[ 8,  "\xc3\xa9t\xc3\xa9 \xe2\x82\xac$n" ],      # "été €"
		[ 5,  "2024-01-0" . (1 + $n % 9) . " 12:00:00+00" ],
		[ 3,  "line\nbreak\ttab" ],
		# long and compressible: carries answers past the compression threshold
		[ 1,  sub { "host-$n.example.org;" x (10 + $r->below(600)) } ],
		[ 1,  sub { unpack('H*', $r->bytes($r->between(100, 3000))) } ],
	);
}

my @TYPES = ('text', 'integer', 'jsonb', 'timestamp with time zone', 'public.color',
	'integer[]', 'character varying', 'numeric', 'bytea');

sub rand_columns
{
	my ($r) = @_;
	my $n = $r->between(1, 5);
	return [ map { [ $_ == 0 ? 'k' : "c$_", $r->pick(@TYPES) ] } 0 .. $n - 1 ];
}

sub rand_table_name
{
	my ($r) = @_;
	return $r->pick('public.hp', 'public.t2', 'public.services', 'sch."Odd ""name"""',
		"public.\xc3\xa9t\xc3\xa9", 'x');
}

# A version: mostly a clock stamp of late 2023 (fixed, so that the inputs
# depend on the seed only), sometimes the extremes.  Answers a real node
# must accept pass version => sub { now_version() } instead.
sub rand_version
{
	my ($r) = @_;
	return $r->weighted(
		[ 8, sub { ((1_700_000_000_000 + $r->below(1 << 30)) << 16) | $r->below(65536) } ],
		[ 1, 1 ],
		[ 1, 0x7fffffffffffffff ],
		[ 2, sub { 1 + ($r->next64 >> 1) % 0x7fffffffffffffff } ]);
}

# ---- generators of valid messages ----
#
# Each returns the uncompressed message (see finish_message for the
# compressed form).  Options let t/025 make answers a real sync worker
# accepts for its requests (the victim profile: its table, node name,
# keys, sequence numbers); without them everything is drawn at random
# within what the readers accept.

# a row (enc_row arguments) of state $state for a table of $ncols columns
sub _row
{
	my ($r, $key, $state, $ncols, %o) = @_;
	my %row = (key => $key, state => $state);
	if ($state == 1 || $state == 2 || $state == 5)
	{
		$row{version} = $o{version} ? $o{version}->() : rand_version($r);
		$row{origin} = $o{origin} ? $o{origin}->() : rand_node($r);
	}
	if ($state == 1)
	{
		if ($ncols == 0)
		{
			$row{values} = undef;    # nvalues -1
		}
		elsif ($o{values})
		{
			$row{values} = $o{values}->($key);
		}
		else
		{
			$row{values} = [ map { rand_value($r) } 1 .. $ncols ];
		}
	}
	return \%row;
}

# Kind C.  Options: node, epoch, after_seq, status, with_rows, tables
# (a sub giving [[name, cols], ...]), key (a sub), values (a sub of the
# key), version, origin, min_changes, max_changes.
sub gen_changes
{
	my ($r, %o) = @_;
	my $status = $o{status} // $r->weighted([ 17, 0 ], [ 2, 1 ], [ 1, 2 ]);
	my $with_rows = $o{with_rows} // ($r->chance(0.8) ? 1 : 0);
	my $after = $o{after_seq} // $r->below(1_000_000);
	my $epoch = $o{epoch} // (1 + ($r->next64 >> 1) % 0x7fffffffffffffff);
	my $node = $o{node} // rand_node($r);
	if ($status != 0)
	{
		return msg_changes(
			node => $node,
			epoch => $epoch,
			first_seq => $after + 2,
			last_seq => $after + $r->below(1000),
			upto_seq => $after,
			status => $status,
			with_rows => $with_rows);
	}

	my @tables;
	if ($o{tables})
	{
		@tables = @{ $o{tables}->() };
	}
	else
	{
		for (1 .. $r->between(1, 4))
		{
			# a table no longer registered on the serving node is ""
			push @tables,
			  $r->chance(0.2) ? [ '', [] ] : [ rand_table_name($r), rand_columns($r) ];
		}
	}
	# an answer without rows describes no columns
	@tables = map { [ $_->[0], $with_rows ? $_->[1] : [] ] } @tables;

	my $max = $o{max_changes} // ($r->chance(0.1) ? 200 : 12);
	my $nchanges = $r->between($o{min_changes} // 0, $max);
	my $seq = $after;
	my @changes;
	for (1 .. $nchanges)
	{
		$seq += $r->weighted([ 8, 1 ], [ 2, 1 + $r->below(5) ]);
		my $ti = $r->below(scalar @tables);
		my ($tname, $cols) = @{ $tables[$ti] };
		my $op = $r->weighted([ 5, 'i' ], [ 5, 'u' ], [ 3, 'd' ], [ 1, 'r' ]);
		my $key = $op eq 'r' ? '' : ($o{key} ? $o{key}->() : rand_key($r));
		my %chg = (
			seq => $seq,
			table => $ti,
			key => $key,
			op => $op,
			version => $r->chance(0.05) ? 0 : ($o{version} ? $o{version}->() : rand_version($r)),
			origin => $r->chance(0.05) ? '' : ($o{origin} ? $o{origin}->() : rand_node($r)));
		if ($with_rows)
		{
			my $state;
			if ($op eq 'r' || $tname eq '')
			{
				$state = 4;    # unknown: a resync, or a table no longer registered
			}
			elsif ($op eq 'd')
			{
				$state = $r->weighted([ 6, 2 ], [ 2, 3 ], [ 1, 1 ]);
			}
			else
			{
				$state = $r->weighted([ 12, 1 ], [ 2, 2 ], [ 2, 3 ], [ 1, 5 ]);
			}
			$chg{row} = _row($r, $key, $state, scalar @$cols, %o);
		}
		push @changes, \%chg;
	}
	my $upto = $seq + ($r->chance(0.2) ? $r->below(10) : 0);
	my $last = $upto + ($r->chance(0.2) ? $r->below(10) : 0);
	return msg_changes(
		node => $node,
		epoch => $epoch,
		first_seq => $r->chance(0.5) ? 1 : $r->between(1, $last + 1),
		last_seq => $last,
		upto_seq => $upto,
		status => 0,
		with_rows => $with_rows,
		tables => \@tables,
		changes => \@changes);
}

sub _pow2
{
	my ($r, $maxlog) = @_;
	return 1 << $r->below($maxlog + 1);
}

# Kind D.  Options: node, table, nbuckets, root, live, tombstones, and
# ranges => 0 for a root digest (no ranges).
sub gen_digest
{
	my ($r, %o) = @_;
	my $nb = $o{nbuckets} // _pow2($r, 24);
	my ($lo, $width, $n) = (0, 0, 0);
	if ($o{ranges} // $r->chance(0.7))
	{
		# n ranges of width buckets from lo, within nb
		$n = $r->below(1 + ($nb < 64 ? $nb : 64));
		if ($n > 0)
		{
			my $maxw = int($nb / $n);
			$width = $r->pick(1, $maxw, $r->between(1, $maxw));
			$lo = $r->below($nb - $n * $width + 1);
		}
	}
	my $count = sub {
		$r->weighted([ 6, $r->below(1000) ], [ 2, $r->below(10_000_000) ], [ 1, (1 << 62) - 1 ], [ 1, 0 ]);
	};
	return msg_digest(
		node => $o{node} // rand_node($r),
		table => $o{table} // rand_table_name($r),
		nbuckets => $nb,
		root => $o{root} // $r->next64,
		live => $o{live} // $count->(),
		tombstones => $o{tombstones} // $count->(),
		lo => $lo,
		width => $width,
		digests => [ map { $r->next64 } 1 .. $n ]);
}

# Kind E.  Options: table, columns, with_rows, nbuckets, keys (the keys
# of the entries, in order), states (allowed row states), more,
# after_hash, values, version, origin.
sub gen_entries
{
	my ($r, %o) = @_;
	my $with_rows = $o{with_rows} // ($r->chance(0.5) ? 1 : 0);
	my $cols = $with_rows ? ($o{columns} // rand_columns($r)) : [];
	my @keys =
	  $o{keys}
	  ? @{ $o{keys} }
	  : map { rand_key($r) } 1 .. $r->below($r->chance(0.1) ? 300 : 15);
	my @states = $o{states} ? @{ $o{states} } : ($with_rows ? (1, 1, 2, 5) : (1, 2));
	my @rows = map { _row($r, $_, $r->pick(@states), scalar @$cols, %o) } @keys;
	my $more = $o{more} // ($r->chance(0.3) ? 1 : 0);
	return msg_entries(
		table => $o{table} // rand_table_name($r),
		columns => $cols,
		nbuckets => $o{nbuckets} // _pow2($r, 24),
		with_rows => $with_rows,
		rows => \@rows,
		more => $more,
		$more ? (after_hash => $o{after_hash} // ($r->next32 - 2147483648)) : ());
}

# Kind R.  Options: table, columns, keys, states, values, version, origin.
sub gen_rows
{
	my ($r, %o) = @_;
	my $cols = $o{columns} // rand_columns($r);
	my @keys =
	  $o{keys}
	  ? @{ $o{keys} }
	  : map { rand_key($r) } 1 .. $r->below($r->chance(0.1) ? 300 : 15);
	my @states = $o{states} ? @{ $o{states} } : (1, 1, 1, 2, 3, 5);
	return msg_rows(
		table => $o{table} // rand_table_name($r),
		columns => $cols,
		rows => [ map { _row($r, $_, $r->pick(@states), scalar @$cols, %o) } @keys ]);
}

# Kind T (protocol.md 2.12), from tables => [{schema, name, lease_ttl_ms,
# columns => [[name, type, flags, default], ...], pk => [index, ...]}, ...]
# (node, n; then FakePeer::msg() options).  Built here rather than in
# t/FakePeer.pm: only registry.join() asks for it, never the sync worker.
sub msg_definitions
{
	my (%a) = @_;
	my $tables = $a{tables} // [];
	my $p = enc_string(exists $a{node} ? $a{node} : 'fake')
	  . enc_int32($a{n} // scalar @$tables);
	for my $t (@$tables)
	{
		$p .= enc_string($t->{schema}) . enc_string($t->{name})
		  . enc_int64($t->{lease_ttl_ms} // 0)
		  . enc_int32(scalar @{ $t->{columns} });
		$p .= enc_string($_->[0]) . enc_string($_->[1]) . enc_byte($_->[2])
		  . enc_string($_->[3])
		  for @{ $t->{columns} };
		$p .= enc_int32(scalar @{ $t->{pk} });
		$p .= enc_int32($_) for @{ $t->{pk} };
	}
	return msg('T', $p, map { exists $a{$_} ? ($_ => $a{$_}) : () }
		  qw(compress flags rawlen format magic kind trailing body truncate extra));
}

my @DEFAULTS = ("'{}'::jsonb", 'now()', '1.5', "'none'::character varying",
	'CURRENT_TIMESTAMP', "pg_read_file('/etc/passwd'::text)", 'public.plf()',
	"nextval('public.s'::regclass)", '(-5)', "'it''s'::text");

# Kind T: table definitions, every field within what the reader accepts
sub gen_definitions
{
	my ($r, %o) = @_;
	my @tables;
	for (1 .. $r->below($r->chance(0.1) ? 40 : 5))
	{
		my $n = $r->between(1, $r->chance(0.1) ? 60 : 6);
		my @cols;
		for my $i (0 .. $n - 1)
		{
			my $flags = $r->weighted([ 6, 0 ], [ 3, 1 ], [ 1, 2 ], [ 1, 3 ]);
			my $def = ($flags & 2) || $r->chance(0.4) ? $r->pick(@DEFAULTS) : undef;
			push @cols, [ $r->chance(0.1) ? "c\xc3\xa9$i" : "c$i", $r->pick(@TYPES), $flags, $def ];
		}
		# a key of 1 to 3 distinct columns, each made NOT NULL
		my @pk = (0 .. $n - 1);
		for my $i (reverse 1 .. $#pk)
		{
			my $j = $r->below($i + 1);
			@pk[ $i, $j ] = @pk[ $j, $i ];
		}
		@pk = @pk[ 0 .. $r->below($n < 3 ? $n : 3) ];
		$cols[$_][2] |= 1 for @pk;
		push @tables, {
			schema => $r->pick('public', 'app', 'Odd "schema"', "\xc3\xa9t\xc3\xa9", 's' x 63),
			name => $r->pick('svc', 'endpoints', 'inst', 'T' x 63, "t$_"),
			lease_ttl_ms => $r->weighted([ 5, 0 ], [ 2, 100 ], [ 2, 30000 ], [ 1, 31104000000 ]),
			columns => \@cols,
			pk => \@pk };
	}
	return msg_definitions(node => $o{node} // rand_node($r), tables => \@tables);
}

# A valid message of a random kind: ($kind, $message)
sub gen_any
{
	my ($r) = @_;
	my $kind = $r->weighted([ 3, 'C' ], [ 2, 'D' ], [ 3, 'E' ], [ 2, 'R' ], [ 2, 'T' ]);
	my $m =
	    $kind eq 'C' ? gen_changes($r)
	  : $kind eq 'D' ? gen_digest($r)
	  : $kind eq 'E' ? gen_entries($r)
	  : $kind eq 'T' ? gen_definitions($r)
	  :                gen_rows($r);
	return ($kind, $m);
}

# ---- zlib ----

# A zlib stream of $data: level 1, 6 or 9, or Huffman-only (what the
# serving side switches to on high-entropy data)
sub zdeflate
{
	my ($data, $mode) = @_;
	$mode //= 6;
	my ($d) =
	  $mode eq 'huffman'
	  ? deflateInit(-Level => 1, -Strategy => Z_HUFFMAN_ONLY)
	  : deflateInit(-Level => $mode);
	my ($o1) = $d->deflate($data);
	my ($o2) = $d->flush(Z_FINISH);
	return $o1 . $o2;
}

# The message as sent: compressed (flag 1, the header keeping the raw
# length) when $compress is a zlib mode and that makes it shorter, as a
# serving node does; else unchanged.  force => 1 compresses even when
# longer (only a broken peer sends that).
sub finish_message
{
	my ($m, $compress, %o) = @_;
	return $m unless $compress && length($m) >= 8;
	my $payload = substr($m, 8);
	my $z = zdeflate($payload, $compress);
	return $m unless $o{force} || length($z) < length($payload);
	return substr($m, 0, 3) . chr(ord(substr($m, 3, 1)) | 1) . substr($m, 4, 4) . $z;
}

# ---- the fields of a message ----

# Where each field of a valid, uncompressed message lies:
# [offset, width, type] with type one of magic, format, kind, flags,
# rawlen (header), len (a string's length), count, int32, int64, byte
# (flag bytes, states, ops, status).  Dies if the message is not valid
# as far as its layout goes (the generators are checked with it).
sub field_map
{
	my ($m) = @_;
	my @f = ([ 0, 1, 'magic' ], [ 1, 1, 'format' ], [ 2, 1, 'kind' ], [ 3, 1, 'flags' ],
		[ 4, 4, 'rawlen' ]);
	my $pos = 8;
	my $len = length $m;
	my $need = sub {
		die "field_map: message ends at $pos, needs $_[0] more" if $pos + $_[0] > $len;
	};
	my $i32 = sub {
		my ($type) = @_;
		$need->(4);
		push @f, [ $pos, 4, $type // 'int32' ];
		my $v = unpack('l>', substr($m, $pos, 4));
		$pos += 4;
		return $v;
	};
	my $i64 = sub { $need->(8); push @f, [ $pos, 8, 'int64' ]; $pos += 8; };
	my $byte = sub {
		$need->(1);
		push @f, [ $pos, 1, 'byte' ];
		return ord(substr($m, $pos++, 1));
	};
	my $str = sub {
		my $n = $i32->('len');
		return undef if $n == -1;
		die "field_map: negative length" if $n < 0;
		$need->($n);
		my $s = substr($m, $pos, $n);
		$pos += $n;
		return $s;
	};
	my $table = sub {
		my $name = $str->();
		my $ncols = $i32->('count');
		for (1 .. $ncols) { $str->(); $str->(); }
		return $ncols;
	};
	my $row = sub {
		my ($ncols) = @_;
		$str->();
		my $state = $byte->();
		if ($state == 1 || $state == 2 || $state == 5)
		{
			$i64->();
			$str->();
		}
		if ($state == 1)
		{
			my $nv = $i32->('count');
			$str->() for 1 .. ($nv < 0 ? 0 : $nv);
		}
	};
	my $kind = substr($m, 2, 1);
	if ($kind eq 'C')
	{
		$str->();
		$i64->() for 1 .. 4;
		$byte->();
		my $with_rows = $byte->();
		my @ncols = map { $table->() } 1 .. $i32->('count');
		for (1 .. $i32->('count'))
		{
			$i64->();
			my $t = $i32->();
			$str->();
			$i64->();
			$str->();
			$byte->();
			$row->($ncols[$t]) if $with_rows;
		}
	}
	elsif ($kind eq 'D')
	{
		$str->();
		$str->();
		$i32->();
		$i64->() for 1 .. 3;
		$i32->();
		$i32->();
		$i64->() for 1 .. $i32->('count');
	}
	elsif ($kind eq 'E')
	{
		my $ncols = $table->();
		$i32->();
		$byte->();
		$row->($ncols) for 1 .. $i32->('count');
		$i32->() if $byte->();
	}
	elsif ($kind eq 'R')
	{
		my $ncols = $table->();
		$row->($ncols) for 1 .. $i32->('count');
	}
	elsif ($kind eq 'T')
	{
		$str->();
		for (1 .. $i32->('count'))
		{
			$str->();
			$str->();
			$i64->();
			for (1 .. $i32->('count'))
			{
				$str->();
				$str->();
				$byte->();
				$str->();
			}
			$i32->() for 1 .. $i32->('count');
		}
	}
	else
	{
		die "field_map: unknown kind $kind";
	}
	die "field_map: " . ($len - $pos) . " trailing bytes" if $pos != $len;
	die "field_map: raw length in header is wrong"
	  if unpack('N', substr($m, 4, 4)) != $len - 8;
	return \@f;
}

# ---- mutation ----

my @INT32 = (0, 1, -1, -2, 0x7fffffff, 0x80000000, 0xffffffff, 0x7ffffffe,
	0x40000000, 1 << 24, (1 << 24) + 1, 3, 16, 17, 4096, 65536);
my @INT64 = (0, 1, -1, -2, 0x7fffffff, 0x80000000, 0xffffffff, 1 << 32,
	1 << 62, (1 << 62) + 1, 0x7fffffffffffffff, 0x8000000000000000);
my @BYTES = (0, 1, 2, 3, 4, 5, 6, 0x7f, 0x80, 0xff, ord('i'), ord('u'), ord('d'),
	ord('r'), ord('x'), ord('R'), ord('C'), ord('D'), ord('E'));

sub _put
{
	my ($s, $off, $bytes) = @_;
	return $s if $off < 0 || $off >= length $s;
	my $n = length $bytes;
	$n = length($s) - $off if $off + $n > length $s;
	substr($s, $off, $n) = substr($bytes, 0, $n);
	return $s;
}

sub _int_bytes
{
	my ($r, $width) = @_;
	return $width == 8
	  ? enc_int64($r->pick(@INT64))
	  : enc_int32($r->pick(@INT32));
}

# The mutators: each takes (rng, message, field map or undef) and returns
# the mutated bytes and what it did.  A field map lists fields of the
# message as it was before any mutation: after one that moved bytes
# around, offsets point at other bytes, which is fine for a fuzzer.
my %MUTATORS = (
	bitflip => sub {
		my ($r, $m) = @_;
		my $n = $r->between(1, 8);
		for (1 .. $n)
		{
			my $bit = $r->below(8 * length $m);
			substr($m, $bit >> 3, 1) = chr(ord(substr($m, $bit >> 3, 1)) ^ (1 << ($bit & 7)));
		}
		return ($m, "bitflip x$n");
	},
	byte => sub {
		my ($r, $m) = @_;
		my $n = $r->between(1, 4);
		for (1 .. $n)
		{
			my $v = $r->chance(0.5) ? $r->pick(@BYTES) : $r->below(256);
			$m = _put($m, $r->below(length $m), chr($v));
		}
		return ($m, "byte x$n");
	},
	aligned_int => sub {
		my ($r, $m) = @_;
		my $w = $r->pick(4, 8);
		my $slots = int(length($m) / $w);
		return ($m, 'aligned_int (too short)') if $slots == 0;
		my $off = $w * $r->below($slots);
		return (_put($m, $off, _int_bytes($r, $w)), "aligned_int$w\@$off");
	},
	field_int => sub {
		my ($r, $m, $fields) = @_;
		return ($m, 'field_int (no map)') unless $fields && @$fields;
		my ($off, $w, $type) = @{ $r->pick(@$fields) };
		return ($m, "field_int (past the end)") if $off + $w > length $m;
		my $b;
		if ($w == 1)
		{
			$b = chr($r->pick(@BYTES));
		}
		elsif ($type eq 'len' && $r->chance(0.5))
		{
			# a string length a little off, or what is left, or one more
			my $cur = unpack('l>', substr($m, $off, 4) . "\0\0\0\0");
			my $left = length($m) - $off - 4;
			$b = enc_int32($r->pick($cur - 1, $cur + 1, $left, $left + 1, -1, -2));
		}
		elsif ($w == 8 && $r->chance(0.2))
		{
			# a 32-bit boundary in either half of an int64
			$b = $r->chance(0.5)
			  ? enc_int32($r->pick(@INT32)) . substr($m, $off + 4, 4)
			  : substr($m, $off, 4) . enc_int32($r->pick(@INT32));
		}
		else
		{
			$b = _int_bytes($r, $w);
		}
		return (_put($m, $off, $b), "field_int $type\@$off");
	},
	truncate => sub {
		my ($r, $m, $fields) = @_;
		my $at =
		  $fields && $r->chance(0.5)
		  ? $r->pick(@$fields)->[0] + $r->below(2)    # at or just after a field's start
		  : $r->below(length $m);
		return (substr($m, 0, $at), "truncate\@$at");
	},
	insert => sub {
		my ($r, $m) = @_;
		my $at = $r->below(length($m) + 1);
		my $n = $r->between(1, 16);
		substr($m, $at, 0) = $r->chance(0.3) ? "\0" x $n : $r->bytes($n);
		return ($m, "insert $n\@$at");
	},
	delete => sub {
		my ($r, $m) = @_;
		my $at = $r->below(length $m);
		my $n = $r->between(1, 16);
		substr($m, $at, $n) = '';
		return ($m, "delete $n\@$at");
	},
	dup_slice => sub {
		my ($r, $m) = @_;
		my $from = $r->below(length $m);
		my $n = $r->between(1, 64);
		my $slice = substr($m, $from, $n);
		my $to = $r->chance(0.5) ? $from + length($slice) : $r->below(length($m) + 1);
		substr($m, $to, 0) = $slice x $r->between(1, 3);
		return ($m, "dup_slice $n\@$from->$to");
	},
);

# Mutators that work on the structure of the payload, and how often
my @PAYLOAD_MUTATORS = (
	[ 5, 'bitflip' ], [ 4, 'byte' ], [ 3, 'aligned_int' ], [ 8, 'field_int' ],
	[ 3, 'truncate' ], [ 2, 'insert' ], [ 2, 'delete' ], [ 2, 'dup_slice' ]);

# Mutate a valid message $m (uncompressed; sent compressed when $compress
# is a zlib mode).  Returns the bytes to send and a description.
#
# The mutation works on the raw message, so that it reaches the payload
# of compressed messages too; then, most of the time, the header's raw
# length is set to what the payload now is (otherwise nearly every
# mutation that moves bytes would be refused by that check alone), the
# payload is compressed if the message is, and now and then the
# envelope is broken as well: a wrong raw length, flipped bits in the
# zlib stream, bytes after it, unknown flag bits, another kind or format.
sub mutate
{
	my ($r, $m, $compress) = @_;
	my $fields = eval { field_map($m) };
	my @did;
	my $n = $r->weighted([ 7, 1 ], [ 2, 2 ], [ 1, 3 ]);
	for (1 .. $n)
	{
		my $name = $r->weighted(@PAYLOAD_MUTATORS);
		my $what;
		($m, $what) = $MUTATORS{$name}->($r, $m, $fields);
		push @did, $what;
	}
	if (length($m) >= 8 && $r->chance(0.75))
	{
		substr($m, 4, 4) = pack('N', length($m) - 8);
	}
	$compress = $r->pick(1, 6, 9, 'huffman') if !$compress && $r->chance(0.1);
	if ($compress && length($m) >= 8)
	{
		$m = finish_message($m, $compress, force => 1);
		push @did, "zlib $compress";
	}
	if ($r->chance(0.3))
	{
		my $env = $r->weighted(
			[ 3, 'rawlen' ], [ 3, 'zflip' ], [ 2, 'trailing' ], [ 2, 'flags' ],
			[ 1, 'kind' ], [ 1, 'format' ], [ 1, 'cut' ]);
		if ($env eq 'rawlen' && length($m) >= 8)
		{
			my $cur = unpack('N', substr($m, 4, 4));
			my $v = $r->pick($cur + 1, $cur - 1, $cur + $r->between(2, 1000), 0,
				$r->pick(@INT32), 33554432, 33554433);
			substr($m, 4, 4) = pack('N', $v & 0xffffffff);
		}
		elsif ($env eq 'zflip' && length($m) > 8)
		{
			$m = finish_message($m, 6, force => 1) unless ord(substr($m, 3, 1)) & 1;
			for (1 .. $r->between(1, 4))
			{
				my $bit = 64 + $r->below(8 * (length($m) - 8));
				substr($m, $bit >> 3, 1) =
				  chr(ord(substr($m, $bit >> 3, 1)) ^ (1 << ($bit & 7)));
			}
		}
		elsif ($env eq 'trailing')
		{
			$m .= $r->chance(0.5) ? "\0" : $r->bytes($r->between(1, 8));
		}
		elsif ($env eq 'flags' && length($m) >= 4)
		{
			substr($m, 3, 1) = chr($r->pick(0, 1, 2, 3, 0x80, 0x81, 0xfe, 0xff));
		}
		elsif ($env eq 'kind' && length($m) >= 3)
		{
			substr($m, 2, 1) = $r->pick('C', 'D', 'E', 'R', 'X', "\0");
		}
		elsif ($env eq 'format' && length($m) >= 2)
		{
			substr($m, 1, 1) = chr($r->pick(0, 2, 0xff));
		}
		elsif ($env eq 'cut')
		{
			$m = substr($m, 0, $r->below(length($m)));
		}
		push @did, $env;
	}
	return ($m, join(', ', @did));
}

sub hexdump
{
	my ($b, $max) = @_;
	my $h = unpack('H*', $max && length($b) > $max ? substr($b, 0, $max) : $b);
	$h .= '...' if $max && length($b) > $max;
	return $h;
}

# ---- a persistent psql session ----
#
# Like PostgreSQL::Test::BackgroundPsql, without writing every query and
# its result to the test's log (a soak issues tens of thousands).  query()
# returns (stdout, stderr) and dies if psql ended (the server closed the
# connection) or the query took longer than the time limit.  stderr also
# carries notices and warnings (registry.sync_now() says so when a peer
# is not in sync): query_safe() fails on errors only.
package FuzzMessages::Session;

sub new
{
	my ($class, $node, %o) = @_;
	my $self = bless {
		in => '',
		out => '',
		err => '',
		n => 0,
		timer => IPC::Run::timeout($o{timeout} // $PostgreSQL::Test::Utils::timeout_default),
	}, $class;
	$self->{h} = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=0', '-d',
			$node->connstr($o{dbname} // 'postgres')
		],
		'<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err},
		$self->{timer});
	$self->query('SELECT 1');
	return $self;
}

sub query
{
	my ($self, $sql) = @_;
	my $banner = '__fuzz_' . ++$self->{n} . '__';
	$self->{out} = '';
	$self->{err} = '';
	$self->{in} .= "$sql\n;\n\\echo $banner\n\\warn $banner\n";
	$self->{timer}->start;
	$self->{h}->pump
	  until $self->{out} =~ /\Q$banner\E\n/ && $self->{err} =~ /\Q$banner\E\n/;
	(my $out = $self->{out}) =~ s/\n?\Q$banner\E\n//;
	(my $err = $self->{err}) =~ s/\Q$banner\E\n//;
	$out =~ s/\n$//;
	return ($out, $err);
}

# a query that must not fail: its output
sub query_safe
{
	my ($self, $sql) = @_;
	my ($out, $err) = $self->query($sql);
	die "query failed: $err\nquery: " . substr($sql, 0, 300) if $err =~ /\b(ERROR|FATAL|PANIC):/;
	return $out;
}

sub quit
{
	my ($self) = @_;
	$self->{in} .= "\\q\n";
	eval { $self->{h}->finish; };
	return;
}

1;
