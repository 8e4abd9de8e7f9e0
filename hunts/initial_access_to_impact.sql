-- name: initial_access_to_impact
-- version: 1
-- owner: threatrank hunting
-- techniques: T1566, T1486, T1041
-- description: Incidents that span the kill chain from initial access to its end: an initial-access alert together with impact, ransomware or exfiltration alerts in the same incident.
SELECT "OrgId", "IncidentId",
       'tactics ' || array_to_string(array_sort(array_agg(DISTINCT "Category")), ', ') AS hit_reason
FROM alerts
GROUP BY "OrgId", "IncidentId"
HAVING SUM(CASE WHEN "Category" = 'InitialAccess' THEN 1 ELSE 0 END) > 0
   AND SUM(CASE WHEN "Category" IN ('Impact', 'Ransomware', 'Exfiltration') THEN 1 ELSE 0 END) > 0
