//! Attack notifications: what a Defender Experts notification tells a customer about a threat
//! the engine ranks high — scope (devices, accounts), techniques and tactics, likely actor,
//! first and last seen, and recommended next steps derived from the tactics reached.

use crate::domain::{Evidence, ENTITY_COLUMNS};
use crate::ingest::format_rfc3339;
use crate::rank::{Actor, ScoredIncident};
use crate::signals::TACTICS;
use serde::Serialize;
use std::collections::BTreeSet;

/// Entity columns that name a device.
pub const DEVICE_COLUMNS: [&str; 2] = ["DeviceId", "DeviceName"];
/// Entity columns that name an account.
pub const ACCOUNT_COLUMNS: [&str; 4] =
    ["AccountSid", "AccountUpn", "AccountObjectId", "AccountName"];

/// What to do next once an attack has reached a tactic (kill-chain order, one step per tactic).
pub fn next_step(tactic: &str) -> Option<&'static str> {
    Some(match tactic {
        "reconnaissance" => "Review exposure of the scanned assets and block the sources at the perimeter.",
        "resource-development" => "Block the attacker infrastructure (domains, IPs, certificates) seen in the alerts.",
        "initial-access" => "Identify the entry vector (phishing mail, exposed service, valid account) and close it; purge related messages.",
        "execution" => "Collect the process tree and command lines on the affected devices; block the payload hashes.",
        "persistence" => "Hunt for and remove persistence (services, scheduled tasks, run keys, new accounts) on the devices in scope.",
        "privilege-escalation" => "Check for new admin rights and exploited vulnerabilities; patch and remove illegitimate privileges.",
        "defense-evasion" => "Verify that security tools are running and untampered on the devices in scope; restore protections.",
        "credential-access" => "Reset the credentials of the accounts in scope, revoke sessions and tokens, and enforce MFA.",
        "discovery" => "Expect follow-on movement: review what the attacker enumerated and watch those targets.",
        "lateral-movement" => "Isolate the devices in scope and hunt for the same accounts and tools on other devices.",
        "collection" => "Determine which data was staged and from where; preserve evidence for the investigation.",
        "command-and-control" => "Block the C2 destinations at proxy and firewall and hunt for other devices contacting them.",
        "exfiltration" => "Assess which data left, block the exfiltration channel and start the breach-notification process.",
        "impact" => "Isolate affected devices now, protect backups, and start incident response (ransomware/destruction playbook).",
        _ => return None,
    })
}

/// One attack notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// threat id (decimal)
    pub threat: String,
    /// 0–100
    pub priority: u8,
    /// calibrated P(TP)
    pub p_tp: f32,
    /// most frequent alert title
    pub title: String,
    /// devices and accounts involved
    pub scope: Scope,
    /// ATT&CK techniques seen, sorted
    pub techniques: Vec<String>,
    /// tactics reached, kill-chain order
    pub tactics: Vec<String>,
    /// most similar known group
    pub actor: Option<Actor>,
    /// first evidence (RFC 3339)
    pub first_seen: String,
    /// last evidence (RFC 3339)
    pub last_seen: String,
    /// recommended actions, kill-chain order
    pub next_steps: Vec<String>,
}

/// Devices and accounts of a threat, as `Column:code` strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scope {
    /// devices (`DeviceId:…`, `DeviceName:…`)
    pub devices: Vec<String>,
    /// accounts (`AccountSid:…`, `AccountUpn:…`, …)
    pub accounts: Vec<String>,
}

/// Codes that mean "not present" in GUIDE exports are not scope: the artifact's learnt
/// sentinels are passed in `absent(column, code)`.
pub fn scope(evidence: &[Evidence], absent: &dyn Fn(usize, u64) -> bool) -> Scope {
    let mut devices = BTreeSet::new();
    let mut accounts = BTreeSet::new();
    for e in evidence {
        for (c, name) in ENTITY_COLUMNS.iter().enumerate() {
            let Some(code) = e.entities.codes[c] else {
                continue;
            };
            if absent(c, code) {
                continue;
            }
            if DEVICE_COLUMNS.contains(name) {
                devices.insert(format!("{name}:{code}"));
            } else if ACCOUNT_COLUMNS.contains(name) {
                accounts.insert(format!("{name}:{code}"));
            }
        }
    }
    Scope {
        devices: devices.into_iter().collect(),
        accounts: accounts.into_iter().collect(),
    }
}

/// Builds the notification of one scored threat from its evidence.
pub fn notification(
    s: &ScoredIncident,
    evidence: &[Evidence],
    absent: &dyn Fn(usize, u64) -> bool,
) -> Notification {
    let techniques: BTreeSet<String> = evidence
        .iter()
        .flat_map(|e| e.techniques.iter().cloned())
        .collect();
    let mut tactics: Vec<&String> = s.tactics.iter().collect();
    tactics.sort_by_key(|t| TACTICS.iter().position(|k| k == t).unwrap_or(usize::MAX));
    let mut next_steps: Vec<String> = tactics
        .iter()
        .filter_map(|t| next_step(t))
        .map(str::to_string)
        .collect();
    if next_steps.is_empty() {
        next_steps.push(
            "No ATT&CK technique was reported: review the alerts' evidence and confirm or dismiss the threat.".into(),
        );
    }
    Notification {
        threat: s.key.incident.0.to_string(),
        priority: s.priority,
        p_tp: s.probs[0],
        title: s.title.clone(),
        scope: scope(evidence, absent),
        techniques: techniques.into_iter().collect(),
        tactics: tactics.into_iter().cloned().collect(),
        actor: s.actor.clone(),
        first_seen: format_rfc3339(s.first_seen),
        last_seen: format_rfc3339(s.last_seen),
        next_steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tactic_has_a_step() {
        for t in TACTICS {
            assert!(next_step(t).is_some(), "{t}");
        }
        assert!(next_step("made-up").is_none());
    }

    #[test]
    fn scope_skips_absent_codes_and_other_columns() {
        let mut e = Evidence::default();
        let dev = ENTITY_COLUMNS
            .iter()
            .position(|c| *c == "DeviceId")
            .unwrap();
        let acc = ENTITY_COLUMNS
            .iter()
            .position(|c| *c == "AccountName")
            .unwrap();
        let ip = ENTITY_COLUMNS
            .iter()
            .position(|c| *c == "IpAddress")
            .unwrap();
        e.entities.codes[dev] = Some(98799);
        e.entities.codes[acc] = Some(42);
        e.entities.codes[ip] = Some(7);
        let mut f = e.clone();
        f.entities.codes[dev] = Some(1);
        let s = scope(&[e, f], &|c, code| c == dev && code == 98799);
        assert_eq!(s.devices, vec!["DeviceId:1"]);
        assert_eq!(s.accounts, vec!["AccountName:42"]);
    }
}
