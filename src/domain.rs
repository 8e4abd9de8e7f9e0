//! Plain data of the pipeline: evidence → alert → incident, grades and id newtypes.
//!
//! First stop of the pipeline's types (no I/O here). One GUIDE CSV row is one [`Evidence`]; rows
//! sharing `(tenant, alert)` form an alert, rows sharing `(tenant, incident)` an incident — the
//! candidate threat that gets graded and ranked. A tenant is GUIDE's `OrgId`.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// A customer tenant (GUIDE `OrgId`). Nothing is ever grouped across two tenants.
    TenantId
);
id_newtype!(
    /// An incident id, unique only within its tenant (GUIDE `IncidentId`). Ids with
    /// [`CORRELATED_INCIDENT_BIT`] set name candidate threats built by `correlate` from alerts
    /// that came without one.
    IncidentId
);

/// The top bit of an [`IncidentId`]: set on the candidate threats that `correlate` builds from
/// alerts without a given incident id (the id is this bit | the group's smallest alert id), and
/// never on a given id (every reader rejects given ids ≥ [`GIVEN_ID_LIMIT`], and alert ids as
/// large on alerts without one). Correlated and given ids therefore never collide.
pub const CORRELATED_INCIDENT_BIT: u64 = 1 << 63;

/// Every reader (GUIDE CSV, Parquet, native JSONL) accepts given incident ids, and alert ids of
/// alerts without one, only below this bound (2^62; GUIDE ids are far below). The id space
/// then has one rule for every format: `[0, 2^62)` given ids, `[2^62, 2^63)` correlated threats
/// relabelled as training incidents by `threatrank retrain` (`2^62 +` their low bits),
/// `[2^63, 2^64)` correlated candidate threats ([`CORRELATED_INCIDENT_BIT`]). No id a tenant
/// sends can name a correlated threat or meet one in training.
pub const GIVEN_ID_LIMIT: u64 = 1 << 62;

/// Why an id at or above [`GIVEN_ID_LIMIT`] is refused (rejection texts of every reader).
pub const RESERVED_ID_REASON: &str =
    "ids from 2^62 up are reserved (correlated candidate threats and their training ids)";

impl IncidentId {
    /// Whether this id names a candidate threat built by `correlate` (top bit set).
    ///
    /// ```
    /// use threatrank::domain::{IncidentId, CORRELATED_INCIDENT_BIT};
    /// assert!(IncidentId(CORRELATED_INCIDENT_BIT | 7).is_correlated());
    /// assert!(!IncidentId(7).is_correlated());
    /// ```
    pub fn is_correlated(self) -> bool {
        self.0 & CORRELATED_INCIDENT_BIT != 0
    }
}
id_newtype!(
    /// An alert id (GUIDE `AlertId`).
    AlertId
);

/// A candidate threat's key: incidents are per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IncidentKey {
    /// owning tenant
    pub tenant: TenantId,
    /// incident within the tenant
    pub incident: IncidentId,
}

impl fmt::Display for IncidentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.incident)
    }
}

/// An analyst's verdict on an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Grade {
    /// real malicious activity
    TruePositive,
    /// real activity that is allowed (admin tool, pentest): not a false positive
    BenignPositive,
    /// the detection was wrong
    FalsePositive,
}

impl Grade {
    /// All grades in class-id order.
    pub const ALL: [Grade; 3] = [
        Grade::TruePositive,
        Grade::BenignPositive,
        Grade::FalsePositive,
    ];

    /// Class id used by `models`: TP = 0, BP = 1, FP = 2.
    pub fn class_id(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Grade::class_id`].
    pub fn from_class_id(id: u8) -> Option<Grade> {
        Self::ALL.get(id as usize).copied()
    }

    /// GUIDE spelling.
    pub fn name(self) -> &'static str {
        match self {
            Grade::TruePositive => "TruePositive",
            Grade::BenignPositive => "BenignPositive",
            Grade::FalsePositive => "FalsePositive",
        }
    }

    /// Short form (TP/BP/FP).
    pub fn short(self) -> &'static str {
        match self {
            Grade::TruePositive => "TP",
            Grade::BenignPositive => "BP",
            Grade::FalsePositive => "FP",
        }
    }

    /// Parses the GUIDE spelling or the short form.
    pub fn parse(s: &str) -> Option<Grade> {
        match s {
            "TruePositive" | "TP" => Some(Grade::TruePositive),
            "BenignPositive" | "BP" => Some(Grade::BenignPositive),
            "FalsePositive" | "FP" => Some(Grade::FalsePositive),
            _ => None,
        }
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Alert severity (native format only; GUIDE carries none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// informational
    Informational,
    /// low
    Low,
    /// medium
    Medium,
    /// high
    High,
    /// critical
    Critical,
}

impl Severity {
    /// 0 (informational) … 4 (critical).
    pub fn rank(self) -> u8 {
        self as u8
    }
}

/// The entity columns of a GUIDE row (anonymized integer codes; `None` = empty cell).
///
/// GUIDE marks "not present" with frequent sentinel codes (e.g. 98799 for `DeviceId`); those
/// are kept as they are here and recognised in `features`, where the sentinels are learnt as
/// the most frequent code per column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entities {
    /// codes in [`ENTITY_COLUMNS`] order
    pub codes: [Option<u64>; N_ENTITY_COLUMNS],
}

/// Number of entity-code columns.
pub const N_ENTITY_COLUMNS: usize = 22;

/// GUIDE entity-code columns, in the order of [`Entities::codes`].
pub const ENTITY_COLUMNS: [&str; N_ENTITY_COLUMNS] = [
    "DeviceId",
    "Sha256",
    "IpAddress",
    "Url",
    "AccountSid",
    "AccountUpn",
    "AccountObjectId",
    "AccountName",
    "DeviceName",
    "NetworkMessageId",
    "EmailClusterId",
    "RegistryKey",
    "RegistryValueName",
    "RegistryValueData",
    "ApplicationId",
    "ApplicationName",
    "OAuthApplicationId",
    "FileName",
    "FolderPath",
    "ResourceIdName",
    "OSFamily",
    "OSVersion",
];

/// One piece of evidence (one GUIDE row, or one entity of a native alert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// 0-based index of the input record this came from (CSV data row or JSONL line record);
    /// score output is aligned on it.
    pub record: u64,
    /// GUIDE `Id` (not unique: never a key)
    pub id: u64,
    /// tenant
    pub tenant: TenantId,
    /// incident within tenant. When the input gave none ([`Evidence::incident_given`] false),
    /// the alert id stands in until `correlate` assigns a candidate threat.
    pub incident: IncidentId,
    /// Whether the input gave `incident` (GUIDE CSV always does; native JSONL when the line
    /// carries `incident_id`). `correlate::Linker` links the alerts that lack one.
    #[serde(default = "given")]
    pub incident_given: bool,
    /// alert
    pub alert: AlertId,
    /// seconds since the Unix epoch (UTC)
    pub timestamp: i64,
    /// detector identity (GUIDE `DetectorId`, or the native detector name)
    pub detector: String,
    /// alert title identity (GUIDE `AlertTitle` code, or native title)
    pub title: String,
    /// alert category (GUIDE `Category`, e.g. `InitialAccess`)
    pub category: String,
    /// ATT&CK technique ids, e.g. `T1566.002`
    pub techniques: Vec<String>,
    /// analyst grade, when known and when labels were read
    pub grade: Option<Grade>,
    /// entity type (GUIDE `EntityType`, e.g. `Ip`, `User`)
    pub entity_type: String,
    /// `Impacted` (true) or `Related` (false)
    pub impacted: bool,
    /// entity codes
    pub entities: Entities,
    /// GUIDE `SuspicionLevel` (empty = None)
    pub suspicion_level: Option<String>,
    /// GUIDE `LastVerdict`
    pub last_verdict: Option<String>,
    /// GUIDE `ThreatFamily`
    pub threat_family: Option<String>,
    /// GUIDE `AntispamDirection`
    pub antispam_direction: Option<String>,
    /// GUIDE `Roles`
    pub roles: Option<String>,
    /// native severity
    pub severity: Option<Severity>,
}

/// Empty evidence of tenant 0, incident 0 (given), alert 0 at time 0: a base for test and bench
/// builders (`Evidence { tenant, alert, ..Default::default() }`).
impl Default for Evidence {
    fn default() -> Self {
        Evidence {
            record: 0,
            id: 0,
            tenant: TenantId(0),
            incident: IncidentId(0),
            incident_given: true,
            alert: AlertId(0),
            timestamp: 0,
            detector: String::new(),
            title: String::new(),
            category: String::new(),
            techniques: Vec::new(),
            grade: None,
            entity_type: String::new(),
            impacted: false,
            entities: Entities::default(),
            suspicion_level: None,
            last_verdict: None,
            threat_family: None,
            antispam_direction: None,
            roles: None,
            severity: None,
        }
    }
}

/// Serde default of [`Evidence::incident_given`]: evidence serialized before the field existed
/// carried its incident id.
fn given() -> bool {
    true
}

impl Evidence {
    /// The incident this evidence belongs to as given by the input (for evidence without a
    /// given incident: the alert id standing in, see [`Evidence::incident`]).
    pub fn incident_key(&self) -> IncidentKey {
        IncidentKey {
            tenant: self.tenant,
            incident: self.incident,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grade_round_trips() {
        for g in Grade::ALL {
            assert_eq!(Grade::parse(g.name()), Some(g));
            assert_eq!(Grade::parse(g.short()), Some(g));
            assert_eq!(Grade::from_class_id(g.class_id()), Some(g));
        }
        assert_eq!(Grade::parse("truepositive"), None);
        assert_eq!(Grade::from_class_id(3), None);
    }
}
