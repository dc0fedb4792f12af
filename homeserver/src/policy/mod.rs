//! TI-M rules as pure functions over typed inputs, called by the domain code at the one place
//! each rule applies (catalogue ids from `shared/spec/tim-requirements.md`).

pub mod federation;

/// B-ADM-02: display names follow the organisation's naming rule and are set by its admin;
/// with `admin_only` set, users cannot change their own.
pub fn may_set_displayname(admin_only: bool, by_org_admin: bool) -> bool {
    !admin_only || by_org_admin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displayname_rule() {
        assert!(may_set_displayname(false, false));
        assert!(may_set_displayname(true, true));
        assert!(!may_set_displayname(true, false));
    }
}
