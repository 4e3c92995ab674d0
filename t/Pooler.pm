# A real PgBouncer (/usr/sbin/pgbouncer, Debian's package, installed by
# scripts/common.sh) in front of a PostgreSQL::Test::Cluster node, for
# t/035_pgbouncer.pl.  It runs as the current OS user, in the foreground
# under IPC::Run, from a temporary directory holding its pgbouncer.ini,
# auth file, log and unix socket; it listens on 127.0.0.1 and that socket
# on a free port (PostgreSQL::Test::Cluster::get_free_port, never 6432 by
# assumption) and reaches the node over the node's unix socket.  No skip:
# without pgbouncer the constructor dies and the test fails.
#
#   my $pool = Pooler->new($node, pool_size => 2, pool_mode => 'transaction');
#   $pool->connstr('postgres')            # for psql, through the pooler
#   $pool->admin('SHOW POOLS')            # the admin console (database pgbouncer)
#   $pool->psql($sql)                     # (stdout, stderr) of psql through it
#   $pool->background_psql()              # a BackgroundPsql session through it
#   $pool->stop                           # also at exit
package Pooler;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;
use Time::HiRes qw(usleep time);

our $binary = $ENV{PGBOUNCER} // '/usr/sbin/pgbouncer';
my @running;

sub new
{
	my ($class, $node, %opts) = @_;
	die "pgbouncer not found at $binary (scripts/common.sh ensure_packages installs it)"
	  unless -x $binary;
	my $self = bless {
		node => $node,
		dir => PostgreSQL::Test::Utils::tempdir_short(),
		port => PostgreSQL::Test::Cluster::get_free_port(),
		user => scalar(getpwuid($<)),
		pool_size => $opts{pool_size} // 2,
		pool_mode => $opts{pool_mode} // 'transaction',
	}, $class;
	my $d = $self->{dir};
	my ($host, $port) = ($node->host, $node->port);
	PostgreSQL::Test::Utils::append_to_file("$d/userlist.txt",
		qq{"$self->{user}" ""\n});
	PostgreSQL::Test::Utils::append_to_file(
		"$d/pgbouncer.ini", qq{[databases]
* = host=$host port=$port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $self->{port}
unix_socket_dir = $d
auth_type = trust
auth_file = $d/userlist.txt
admin_users = $self->{user}
stats_users = $self->{user}
pool_mode = $self->{pool_mode}
default_pool_size = $self->{pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_db_connections = $self->{pool_size}
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
server_reset_query =
logfile = $d/pgbouncer.log
pidfile = $d/pgbouncer.pid
log_connections = 1
log_disconnections = 1
});
	$self->start;
	return $self;
}

sub start
{
	my ($self) = @_;
	my $d = $self->{dir};
	$self->{out} = '';
	$self->{h} = IPC::Run::start([ $binary, "$d/pgbouncer.ini" ],
		'<', \undef, '>', \$self->{out}, '2>&1');
	push @running, $self;
	# ready when the admin console answers
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	for (;;)
	{
		my ($ok, $out) = $self->_admin_try('SHOW VERSION');
		last if $ok;
		$self->{h}->pump_nb if $self->{h}->pumpable;
		die "pgbouncer exited at start: $self->{out}" . $self->log
		  unless $self->{h}->pumpable;
		die "pgbouncer did not accept connections: $out\n" . $self->log
		  if time() > $deadline;
		usleep(100_000);
	}
	note "pgbouncer listening on 127.0.0.1:$self->{port} and $d, "
	  . "pool_mode $self->{pool_mode}, pool size $self->{pool_size}";
}

sub port { return $_[0]->{port}; }
sub dir  { return $_[0]->{dir}; }

sub log
{
	my ($self) = @_;
	my $f = "$self->{dir}/pgbouncer.log";
	return -f $f ? PostgreSQL::Test::Utils::slurp_file($f) : '';
}

# a libpq connection string through the pooler (TCP on 127.0.0.1)
sub connstr
{
	my ($self, $db, $extra) = @_;
	return "host=127.0.0.1 port=$self->{port} dbname=" . ($db // 'postgres')
	  . " user=$self->{user}" . (defined $extra ? " $extra" : '');
}

sub _psql_cmd
{
	my ($self, $connstr) = @_;
	return [ $self->{node}->installed_command('psql'),
		'-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $connstr ];
}

sub _admin_try
{
	my ($self, $cmd) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[ @{ $self->_psql_cmd($self->connstr('pgbouncer')) }, '-c', $cmd ],
		'<', \undef, '>', \$out, '2>', \$err);
	return ($ok, $ok ? $out : $err);
}

# A command of the admin console (SHOW POOLS, SHOW SERVERS, ...): its rows
# as '|'-separated lines; dies on error.
sub admin
{
	my ($self, $cmd) = @_;
	my ($ok, $out) = $self->_admin_try($cmd);
	die "pgbouncer admin '$cmd' failed: $out" unless $ok;
	chomp $out;
	return $out;
}

# SHOW $what (POOLS, SERVERS, CLIENTS...) as a list of hashes, one a row,
# for the pools of database $db (default postgres)
sub show
{
	my ($self, $what, $db) = @_;
	$db //= 'postgres';
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			$self->{node}->installed_command('psql'),
			'-XAq', '-F', '|', '-P', 'footer=off', '-d', $self->connstr('pgbouncer'),
			'-c', "SHOW $what"
		],
		'<', \undef, '>', \$out, '2>', \$err)
	  or die "SHOW $what: $err";
	my @lines = split /\n/, $out;
	my @cols = split /\|/, shift(@lines), -1;
	my @rows;
	for my $l (@lines)
	{
		my @v = split /\|/, $l, -1;
		my %r;
		@r{@cols} = @v;
		push @rows, \%r if !defined $r{database} || $r{database} eq $db;
	}
	return @rows;
}

# psql through the pooler: (stdout, stderr) of $sql, SQLSTATEs shown
sub psql
{
	my ($self, $sql, %opts) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			@{ $self->_psql_cmd($self->connstr('postgres', $opts{conn_extra})) },
			'-v', 'VERBOSITY=verbose', '-f', '-'
		],
		'<', \$sql, '>', \$out, '2>', \$err);
	chomp $out;
	return ($out, $err);
}

sub safe_psql
{
	my ($self, $sql) = @_;
	my ($out, $err) = $self->psql($sql);
	die "psql through pgbouncer failed: $err" if $err ne '';
	return $out;
}

# a BackgroundPsql session through the pooler (psql uses the last -d)
sub background_psql
{
	my ($self, %opts) = @_;
	return $self->{node}->background_psql('postgres',
		extra_params => [ '-d', $self->connstr('postgres', $opts{conn_extra}) ]);
}

sub stop
{
	my ($self) = @_;
	return unless $self->{h};
	my $h = delete $self->{h};
	if ($h->pumpable)
	{
		$h->signal('TERM');    # pgbouncer: SIGTERM is an immediate shutdown
		my $t = time() + 10;
		while ($h->pumpable && time() < $t)
		{
			$h->pump_nb;
			usleep(50_000);
		}
		$h->kill_kill;
	}
	$h->finish;
	@running = grep { $_ != $self } @running;
}

END
{
	my $rc = $?;
	$_->stop for @running;
	$? = $rc;
}

1;
