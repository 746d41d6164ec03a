//! `meridian cert`: a cluster's own CA and the certificates its nodes use to
//! prove who they are to each other (and, optionally, a certificate for a
//! node's public HTTPS listener). Keys are written 0600 and never printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use meridian_link::NodeIdentity;
use meridian_link::certs::{self, PemPair};

#[derive(Subcommand)]
pub enum CertCommand {
    /// Create the cluster's CA: DIR/ca.pem (the certificate every node
    /// trusts) and DIR/ca.key (keep it off the nodes).
    InitCa {
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "Meridian cluster CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every node certificate must then be
        /// issued again).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node's certificate: OUT/node-REGION-NODE.pem and .key. The
    /// certificate names the node's region and raft id; a node refuses to
    /// start with another node's certificate, and its peers refuse calls it
    /// makes in another node's name.
    Issue {
        /// The directory of `init-ca`.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        region: String,
        /// The node's raft id (`meridian.raft_id`).
        #[arg(long)]
        node: u64,
        /// More names the certificate is valid for (DNS names or IPs).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Where to write [default: the CA's directory].
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Issue a certificate for a node's public HTTPS listener
    /// (`meridian.tls_cert`, `tls_key`): OUT/NAME.pem and .key.
    Server {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The names clients use (DNS names or IPs); at least one.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value = "server")]
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

pub fn run(command: CertCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertCommand::InitCa {
            dir,
            name,
            days,
            force,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if dir.join("ca.key").exists() && !force {
                bail!(
                    "{} already holds a CA (ca.key); pass --force to replace it",
                    dir.display()
                );
            }
            let ca = certs::generate_ca(&name, days)?;
            write_pair(&dir, "ca", &ca)?;
            println!(
                "CA written: {} (and ca.key, 0600)",
                dir.join("ca.pem").display()
            );
        }
        CertCommand::Issue {
            ca_dir,
            region,
            node,
            hosts,
            out,
            days,
        } => {
            let (ca_cert, ca_key) = read_ca(&ca_dir)?;
            let identity = NodeIdentity::new(region.clone(), node)?;
            let pair = certs::issue_node_cert(&ca_cert, &ca_key, &identity, &hosts, days)?;
            let out = out.unwrap_or(ca_dir);
            let name = format!("node-{region}-{node}");
            write_pair(&out, &name, &pair)?;
            println!(
                "certificate of {identity} written: {} (and {name}.key, 0600)",
                out.join(format!("{name}.pem")).display()
            );
        }
        CertCommand::Server {
            ca_dir,
            hosts,
            name,
            out,
            days,
        } => {
            let (ca_cert, ca_key) = read_ca(&ca_dir)?;
            let pair = certs::issue_server_cert(&ca_cert, &ca_key, &hosts, days)?;
            let out = out.unwrap_or(ca_dir);
            write_pair(&out, &name, &pair)?;
            println!(
                "server certificate for {} written: {} (and {name}.key, 0600)",
                hosts.join(", "),
                out.join(format!("{name}.pem")).display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_ca(dir: &Path) -> anyhow::Result<(String, String)> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (create a CA with `meridian cert init-ca --dir {}`)",
                path.display(),
                dir.display()
            )
        })
    };
    Ok((read("ca.pem")?, read("ca.key")?))
}

fn write_pair(dir: &Path, name: &str, pair: &PemPair) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert = dir.join(format!("{name}.pem"));
    std::fs::write(&cert, &pair.cert_pem).with_context(|| format!("writing {}", cert.display()))?;
    certs::write_private(&dir.join(format!("{name}.key")), &pair.key_pem)?;
    Ok(())
}
