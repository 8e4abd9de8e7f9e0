-- name: initial_access_to_impact
-- version: 2
-- owner: threatrank hunting
-- techniques: T1566, T1486, T1041
-- description: Incidents that span the kill chain from initial access to its end: an initial-access alert together with impact, ransomware or exfiltration alerts in the same incident.
-- v2: the same hits as v1, from plain aggregates over DISTINCT rows (v1's
-- array_agg(DISTINCT …) kept a set per incident that DataFusion cannot spill; it ran out of
-- memory under the default limit).
WITH tactics AS (
  SELECT DISTINCT "OrgId", "IncidentId", "Category"
  FROM alerts
  WHERE "Category" IS NOT NULL AND "Category" <> ''
)
SELECT "OrgId", "IncidentId",
       'initial access through ' ||
       MAX(CASE WHEN "Category" IN ('Impact', 'Ransomware', 'Exfiltration') THEN "Category" END) ||
       ' (' || CAST(COUNT(*) AS VARCHAR) || ' tactics)' AS hit_reason
FROM tactics
GROUP BY "OrgId", "IncidentId"
HAVING SUM(CASE WHEN "Category" = 'InitialAccess' THEN 1 ELSE 0 END) > 0
   AND SUM(CASE WHEN "Category" IN ('Impact', 'Ransomware', 'Exfiltration') THEN 1 ELSE 0 END) > 0
