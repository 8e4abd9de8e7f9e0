-- name: device_multi_detector_day
-- version: 1
-- owner: threatrank hunting
-- techniques: T1059, T1204, T1021
-- description: One device hit by three or more distinct detectors across two or more ATT&CK tactics within one UTC day. Device ids seen in more than one tenant are placeholders (GUIDE's "not present" codes) and are left out.
WITH ev AS (
  SELECT "OrgId", "IncidentId", "DeviceId", "DetectorId", "Category",
         substr(CAST("Timestamp" AS VARCHAR), 1, 10) AS day
  FROM alerts
  WHERE "DeviceId" IS NOT NULL AND "DeviceId" <> ''
),
real_devices AS (
  SELECT "DeviceId" FROM ev GROUP BY "DeviceId" HAVING COUNT(DISTINCT "OrgId") = 1
),
hot AS (
  SELECT ev."OrgId", ev."DeviceId", ev.day
  FROM ev JOIN real_devices ON ev."DeviceId" = real_devices."DeviceId"
  GROUP BY ev."OrgId", ev."DeviceId", ev.day
  HAVING COUNT(DISTINCT ev."DetectorId") >= 3 AND COUNT(DISTINCT ev."Category") >= 2
)
SELECT DISTINCT ev."OrgId", ev."IncidentId",
       'device ' || hot."DeviceId" || ' hit by 3+ detectors across tactics on ' || hot.day AS hit_reason
FROM ev JOIN hot
  ON ev."OrgId" = hot."OrgId" AND ev."DeviceId" = hot."DeviceId" AND ev.day = hot.day
