-- name: rare_hash_single_tenant
-- version: 2
-- owner: threatrank hunting
-- techniques: T1204.002, T1027
-- description: A file hash seen in one tenant only and on at most two alerts anywhere: a file no other customer has, the classic sign of a targeted or freshly built payload. Hashes seen in several tenants (including GUIDE's "not present" code) are out.
-- v2, same hits as v1: plain aggregates over DISTINCT rows instead of COUNT(DISTINCT …)
-- (DataFusion spills those under its memory limit; per-group distinct sets may not fit), and
-- the smaller side of the join on the left (DataFusion builds its hash table there, without
-- spilling).
WITH files AS (
  SELECT "OrgId", "IncidentId", "AlertId", "Sha256"
  FROM alerts
  WHERE "EntityType" = 'File' AND "Sha256" IS NOT NULL AND "Sha256" <> ''
),
rare AS (
  SELECT "Sha256"
  FROM (SELECT DISTINCT "Sha256", "OrgId", "AlertId" FROM files WHERE "AlertId" IS NOT NULL) a
  GROUP BY "Sha256"
  HAVING MIN("OrgId") = MAX("OrgId") AND COUNT(*) <= 2
)
SELECT DISTINCT files."OrgId", files."IncidentId",
       'file ' || files."Sha256" || ' seen in this tenant only' AS hit_reason
FROM rare JOIN files ON files."Sha256" = rare."Sha256"
