use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('smoke');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'registry'\nregistry.node_name = 'smoke'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION registry');
is($node->safe_psql('postgres', 'SELECT state FROM registry.node'), 'ready', 'node ready');
$node->stop;
done_testing();
