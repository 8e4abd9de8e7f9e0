-- name: device_multi_detector_day
-- version: 2
-- owner: threatrank hunting
-- techniques: T1059, T1204, T1021
-- description: One device hit by three or more distinct detectors across two or more ATT&CK tactics within one UTC day. Device ids seen in more than one tenant are placeholders (GUIDE's "not present" codes) and are left out.
-- v2, same hits as v1: plain aggregates over DISTINCT rows instead of COUNT(DISTINCT …)
-- (DataFusion spills those under its memory limit; per-group distinct sets may not fit), and
-- the small side of each join on the left (DataFusion builds its hash table there, without
-- spilling).
WITH ev AS (
  SELECT "OrgId", "IncidentId", "DeviceId", "DetectorId", "Category",
         substr(CAST("Timestamp" AS VARCHAR), 1, 10) AS day
  FROM alerts
  WHERE "DeviceId" IS NOT NULL AND "DeviceId" <> ''
),
real_devices AS (
  SELECT "DeviceId" FROM ev GROUP BY "DeviceId" HAVING MIN("OrgId") = MAX("OrgId")
),
detectors AS (
  SELECT "OrgId", "DeviceId", day
  FROM (SELECT DISTINCT "OrgId", "DeviceId", day, "DetectorId" FROM ev
        WHERE "DetectorId" IS NOT NULL) d
  GROUP BY "OrgId", "DeviceId", day
  HAVING COUNT(*) >= 3
),
tactics AS (
  SELECT "OrgId", "DeviceId", day
  FROM (SELECT DISTINCT "OrgId", "DeviceId", day, "Category" FROM ev
        WHERE "Category" IS NOT NULL) c
  GROUP BY "OrgId", "DeviceId", day
  HAVING COUNT(*) >= 2
),
hot AS (
  SELECT d."OrgId", d."DeviceId", d.day
  FROM detectors d
  JOIN tactics t ON d."OrgId" = t."OrgId" AND d."DeviceId" = t."DeviceId" AND d.day = t.day
  JOIN real_devices r ON d."DeviceId" = r."DeviceId"
)
SELECT DISTINCT ev."OrgId", ev."IncidentId",
       'device ' || hot."DeviceId" || ' hit by 3+ detectors across tactics on ' || hot.day AS hit_reason
FROM hot JOIN ev
  ON ev."OrgId" = hot."OrgId" AND ev."DeviceId" = hot."DeviceId" AND ev.day = hot.day
