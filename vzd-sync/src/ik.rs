//! Rules for the domains we enter into the federation list (B-PROV-02, B-PROV-03): a domain
//! of a health insurer (`isInsurance`) names at least one Institutionskennzeichen (IK), each
//! nine digits, starting with 10, 16 or 95, with a valid check digit, none twice; other domains
//! name none.

/// The check digit of an IK: digits 3 to 8 weighted 2-1-2-1-2-1, the digit sums of the
/// products added, modulo 10 (GKV "Gemeinsames Rundschreiben Institutionskennzeichen").
fn check_digit(digits: &[u8]) -> u8 {
    digits[2..8]
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let p = d * if i % 2 == 0 { 2 } else { 1 };
            p / 10 + p % 10
        })
        .sum::<u8>()
        % 10
}

/// Checks one IK number.
pub fn validate_ik(ik: &str) -> Result<(), String> {
    if ik.len() != 9 || !ik.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("IK {ik:?} is not nine digits"));
    }
    if !["10", "16", "95"].contains(&&ik[..2]) {
        return Err(format!("IK {ik} does not start with 10, 16 or 95"));
    }
    let digits: Vec<u8> = ik.bytes().map(|b| b - b'0').collect();
    if check_digit(&digits) != digits[8] {
        return Err(format!("IK {ik} has a wrong check digit"));
    }
    Ok(())
}

/// Checks the IK numbers of a domain entry.
pub fn validate_iks(is_insurance: bool, iks: &[String]) -> Result<(), String> {
    if !is_insurance {
        return match iks.is_empty() {
            true => Ok(()),
            false => Err("a domain that is not an insurer's names no IK".into()),
        };
    }
    if iks.is_empty() {
        return Err("an insurer's domain names at least one IK".into());
    }
    for (i, ik) in iks.iter().enumerate() {
        validate_ik(ik)?;
        if iks[..i].contains(ik) {
            return Err(format!("IK {ik} is named twice"));
        }
    }
    Ok(())
}

/// A Matrix domain as the federation list holds it: a DNS name (no port, no scheme).
pub fn validate_domain_name(domain: &str) -> Result<(), String> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    match ok {
        true => Ok(()),
        false => Err(format!("{domain:?} is not a lower-case DNS name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits_of_the_gematik_examples() {
        validate_ik("108433248").unwrap();
        validate_ik("104127692").unwrap();
        assert!(
            validate_ik("108433249")
                .unwrap_err()
                .contains("check digit")
        );
        assert!(validate_ik("208433248").unwrap_err().contains("start"));
        assert!(validate_ik("10843324").is_err());
        assert!(validate_ik("10843324x").is_err());
    }

    #[test]
    fn insurer_rules() {
        validate_iks(false, &[]).unwrap();
        assert!(validate_iks(false, &["108433248".into()]).is_err());
        assert!(validate_iks(true, &[]).is_err());
        validate_iks(true, &["108433248".into(), "104127692".into()]).unwrap();
        assert!(
            validate_iks(true, &["108433248".into(), "108433248".into()])
                .unwrap_err()
                .contains("twice")
        );
    }

    #[test]
    fn domain_names() {
        validate_domain_name("praxis-1.tim.example.de").unwrap();
        for bad in [
            "",
            "localhost",
            "Praxis.de",
            "a..de",
            "-a.de",
            "a.de:8448",
            "a_b.de",
        ] {
            assert!(validate_domain_name(bad).is_err(), "{bad}");
        }
    }
}
