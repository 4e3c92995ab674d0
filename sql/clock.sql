-- The hybrid logical clock: unique, strictly increasing stamps; never
-- backwards when the wall clock is; past every version it receives.

-- stamps are strictly increasing, even many in one millisecond
SELECT bool_and(b > a) AS increasing, count(DISTINCT b) = count(*) AS unique
  FROM (SELECT lag(s) OVER (ORDER BY n) AS a, s AS b
          FROM (SELECT n, registry.hlc_now() AS s FROM generate_series(1, 10000) n) x) y
 WHERE a IS NOT NULL;

-- the wall-clock part is now
SELECT abs(extract(epoch FROM registry.version_time(registry.hlc_now()) - clock_timestamp())) < 60
       AS close_to_now;

-- the wall clock steps back an hour: stamps keep increasing
CREATE TEMP TABLE t0 AS SELECT registry.hlc_now() AS v,
  (SELECT clock_regressions FROM registry.node) AS r;
SELECT registry.set_clock_offset('-1 hour');
SELECT bool_and(s > (SELECT v FROM t0)) AS above_before,
       bool_and(b > a) AS increasing
  FROM (SELECT lag(s) OVER (ORDER BY n) AS a, s AS b, s
          FROM (SELECT n, registry.hlc_now() AS s FROM generate_series(1, 1000) n) x) y
 WHERE a IS NOT NULL;
SELECT clock_offset_ms, clock_regressions > (SELECT r FROM t0) AS counted FROM registry.node;
-- and writes too
CREATE TABLE clk (id int PRIMARY KEY, v int);
SELECT registry.replicate('clk');
INSERT INTO clk VALUES (1, 0);
CREATE TEMP TABLE t1 AS SELECT registry_version AS v FROM clk;
UPDATE clk SET v = v + 1;
SELECT registry_version > (SELECT v FROM t1) AS grew,
       registry.version_time(registry_version) > clock_timestamp() - interval '5 minutes' AS not_behind
  FROM clk;
SELECT registry.set_clock_offset('0');

-- receiving a version ahead of us moves the clock past it ...
CREATE TEMP TABLE t2 AS SELECT registry.hlc_now() + (30000::bigint << 16) AS v;
SELECT registry.hlc_update((SELECT v FROM t2)) >= (SELECT v FROM t2) AS advanced;
SELECT registry.hlc_now() > (SELECT v FROM t2) AS past_received;
-- ... unless it is further ahead than registry.max_clock_skew (1 minute)
SELECT error_of('SELECT registry.hlc_update(registry.hlc_now() + (3600000::bigint << 16))');
SELECT versions_refused FROM registry.node;
SELECT registry.hlc_update(-5);

-- only superusers move the clock, even when allowed to call the functions
CREATE ROLE clock_user IN ROLE registry_admin;
GRANT EXECUTE ON FUNCTION registry.set_clock_offset(interval), registry.hlc_update(bigint)
  TO clock_user;
SET ROLE clock_user;
SELECT registry.set_clock_offset('1 hour');
SELECT registry.hlc_update(1);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION registry.set_clock_offset(interval), registry.hlc_update(bigint)
  FROM clock_user;
DROP ROLE clock_user;

DROP TABLE clk;
