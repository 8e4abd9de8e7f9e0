-- name: credential_access_then_lateral_movement
-- version: 1
-- owner: threatrank hunting
-- techniques: T1003, T1021, T1550
-- description: The same account raises a credential-access alert and, within the next 24 hours, a lateral-movement alert: stolen credentials being used to move. Account ids seen in more than one tenant are placeholders and are left out.
WITH ev AS (
  SELECT "OrgId", "IncidentId", "AccountObjectId" AS acct, "Category",
         to_timestamp("Timestamp") AS ts
  FROM alerts
  WHERE "AccountObjectId" IS NOT NULL AND "AccountObjectId" <> ''
    AND "Category" IN ('CredentialAccess', 'CredentialStealing', 'LateralMovement')
),
real_accounts AS (
  SELECT acct FROM (SELECT DISTINCT "OrgId", "AccountObjectId" AS acct FROM alerts
                    WHERE "AccountObjectId" IS NOT NULL AND "AccountObjectId" <> '')
  GROUP BY acct HAVING COUNT(*) = 1
),
pairs AS (
  SELECT c."OrgId" AS c_org, c."IncidentId" AS c_inc, l."OrgId" AS l_org,
         l."IncidentId" AS l_inc, c.acct
  FROM ev c
  JOIN ev l ON c."OrgId" = l."OrgId" AND c.acct = l.acct
  JOIN real_accounts r ON c.acct = r.acct
  WHERE c."Category" IN ('CredentialAccess', 'CredentialStealing')
    AND l."Category" = 'LateralMovement'
    AND l.ts >= c.ts AND l.ts <= c.ts + INTERVAL '1 day'
)
SELECT c_org AS "OrgId", c_inc AS "IncidentId",
       'account ' || acct || ': credential access, then lateral movement within 24 h' AS hit_reason
FROM pairs
UNION
SELECT l_org AS "OrgId", l_inc AS "IncidentId",
       'account ' || acct || ': lateral movement within 24 h of credential access' AS hit_reason
FROM pairs
