//! A federation of test servers on loopback: a test CA, one TLS certificate valid for every
//! server name, and a federation port per process. Each process resolves the others' names to
//! those ports — our homeserver through `federation.resolve`, Synapse through its SRV cache
//! (`synapse.rs`) — and trusts only the test CA, so TLS is checked for the server name as in
//! production.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use crate::{Server, Store, free_port, unique};

/// The servers of one test: names grouped by process (a process may host several tenants).
pub struct Net {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Per process: its server names (the first is its default tenant) and federation port.
    pub processes: Vec<(Vec<String>, u16)>,
}

impl Net {
    /// `tenants[i]` names process i's tenants (count) — e.g. `&[2, 1]`: a process with two
    /// tenants and one with one. Names are unique per test run.
    pub fn new(tenants: &[usize]) -> Self {
        let processes: Vec<(Vec<String>, u16)> = tenants
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let names = (0..n)
                    .map(|t| unique(&format!("fed{i}{}", (b'a' + t as u8) as char)))
                    .collect();
                (names, free_port())
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<String> = processes.iter().flat_map(|(n, _)| n.clone()).collect();
        let (ca, cert, key) = issue(&all);
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca_file = write("ca.pem", ca);
        let cert_file = write("cert.pem", cert);
        let key_file = write("key.pem", key);
        let mut resolve = String::from("[federation.resolve]\n");
        for (names, port) in &processes {
            for name in names {
                resolve.push_str(&format!("\"{name}\" = \"127.0.0.1:{port}\"\n"));
            }
        }
        write("federation.toml", resolve);
        Net {
            dir,
            ca_file,
            cert_file,
            key_file,
            processes,
        }
    }

    /// The default tenant's name of process `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.processes[i].0[0]
    }

    /// Every server name → its federation address.
    pub fn resolve(&self) -> BTreeMap<String, SocketAddr> {
        self.processes
            .iter()
            .flat_map(|(names, port)| {
                names
                    .iter()
                    .map(move |n| (n.clone(), SocketAddr::from(([127, 0, 0, 1], *port))))
            })
            .collect()
    }

    /// Starts process `i` as a `tim-homeserver` with its TLS listener and every tenant of it.
    pub async fn homeserver(&self, i: usize, store: Store, env: &[(&str, &str)]) -> Server {
        let (names, port) = &self.processes[i];
        let listen = format!("127.0.0.1:{port}");
        let config = self.dir.path().join("federation.toml");
        let mut all: Vec<(&str, &str)> = vec![
            ("TIM_CONFIG", config.to_str().unwrap()),
            ("TIM_FEDERATION__LISTEN", &listen),
            (
                "TIM_FEDERATION__TLS_CERTIFICATE",
                self.cert_file.to_str().unwrap(),
            ),
            (
                "TIM_FEDERATION__TLS_PRIVATE_KEY",
                self.key_file.to_str().unwrap(),
            ),
            (
                "TIM_FEDERATION__CA_CERTIFICATES",
                self.ca_file.to_str().unwrap(),
            ),
        ];
        all.extend_from_slice(env);
        let server = Server::start_named(store, &names[0], &all);
        for tenant in &names[1..] {
            server.add_tenant(tenant).await;
        }
        server
    }
}

/// A CA and a certificate for `names` signed by it, as PEM: (CA, certificate, key).
fn issue(names: &[String]) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let named = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name = named("TIM e2e federation CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    // OpenSSL (Synapse) takes a certificate whose subject equals its issuer for
    // self-signed: the server certificate gets a name of its own.
    let mut params = CertificateParams::new(names.to_vec()).unwrap();
    params.distinguished_name = named(&names[0]);
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
