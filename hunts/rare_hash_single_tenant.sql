-- name: rare_hash_single_tenant
-- version: 1
-- owner: threatrank hunting
-- techniques: T1204.002, T1027
-- description: A file hash seen in one tenant only and on at most two alerts anywhere: a file no other customer has, the classic sign of a targeted or freshly built payload. Hashes seen in several tenants (including GUIDE's "not present" code) are out.
WITH files AS (
  SELECT "OrgId", "IncidentId", "AlertId", "Sha256"
  FROM alerts
  WHERE "EntityType" = 'File' AND "Sha256" IS NOT NULL AND "Sha256" <> ''
),
rare AS (
  SELECT "Sha256" FROM files
  GROUP BY "Sha256"
  HAVING COUNT(DISTINCT "OrgId") = 1 AND COUNT(DISTINCT "AlertId") <= 2
)
SELECT DISTINCT files."OrgId", files."IncidentId",
       'file ' || files."Sha256" || ' seen in this tenant only' AS hit_reason
FROM files JOIN rare ON files."Sha256" = rare."Sha256"
