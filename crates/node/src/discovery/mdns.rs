//! mDNS / DNS-SD: advertises this node as `<device id>._meshsync._tcp.local` with TXT `id` (the
//! device id), `g` (the group's discovery tag, never the secret) and `v` (protocol version), and
//! browses for the same service. Resolved instances of our group feed the peer table as `mdns`
//! hints; goodbyes withdraw them. Addresses follow the interfaces: the daemon checks them every
//! second and announces the new ones.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use meshsync_core::DeviceId;

use crate::mesh::Mesh;

/// The DNS-SD service type.
pub const SERVICE_TYPE: &str = "_meshsync._tcp.local.";

/// A running advertisement and browse.
pub(crate) struct Mdns {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Mdns {
    pub(crate) fn start(mesh: &Mesh) -> Result<Mdns, mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        daemon.set_ip_check_interval(1)?;
        let me = mesh.device_id();
        let instance = me.to_string();
        let host = format!("meshsync-{}.local.", me.short().to_ascii_lowercase());
        let tag = mesh.group().discovery_tag();
        let version = meshsync_wire::PROTOCOL_VERSION.to_string();
        let properties = [("id", instance.as_str()), ("g", tag.as_str()), ("v", version.as_str())];
        let listen = mesh.listen_addr();
        let mut info = if listen.ip().is_unspecified() {
            ServiceInfo::new(SERVICE_TYPE, &instance, &host, (), listen.port(), &properties[..])?.enable_addr_auto()
        } else {
            ServiceInfo::new(SERVICE_TYPE, &instance, &host, listen.ip(), listen.port(), &properties[..])?
        };
        // The instance name is our device id, which no other device can have.
        info.set_requires_probe(false);
        let fullname = info.get_fullname().to_string();
        daemon.register(info)?;
        let events = daemon.browse(SERVICE_TYPE)?;
        let browse_mesh = mesh.clone();
        std::thread::Builder::new()
            .name("meshsync-mdns".into())
            .spawn(move || {
                // Ends when the daemon shuts down and drops its side of the channel.
                while let Ok(event) = events.recv() {
                    handle(&browse_mesh, &tag, event);
                }
            })
            .map_err(|e| mdns_sd::Error::Msg(e.to_string()))?;
        tracing::info!(instance = %fullname, "mDNS discovery on");
        Ok(Mdns { daemon, fullname })
    }

    /// Says goodbye (so peers forget us at once) and stops the daemon.
    pub(crate) async fn shutdown(self) {
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(done) = self.daemon.unregister(&self.fullname) {
                let _ = done.recv_timeout(std::time::Duration::from_secs(1));
            }
            let _ = self.daemon.shutdown();
        })
        .await;
    }
}

/// The device an instance name (`<device id>._meshsync._tcp.local.`) names.
fn instance_device(fullname: &str) -> Option<DeviceId> {
    fullname.strip_suffix(SERVICE_TYPE)?.strip_suffix('.')?.parse().ok()
}

fn handle(mesh: &Mesh, tag: &str, event: ServiceEvent) {
    match event {
        ServiceEvent::ServiceResolved(service) => {
            let Some(device) = instance_device(service.get_fullname()) else { return };
            let txt_id = service.get_property_val_str("id").and_then(|id| id.parse::<DeviceId>().ok());
            if txt_id != Some(device)
                || service.get_property_val_str("g") != Some(tag)
                || service.get_property_val_str("v") != Some(&meshsync_wire::PROTOCOL_VERSION.to_string())
            {
                return;
            }
            let port = service.get_port();
            let mut addrs: Vec<IpAddr> = service
                .get_addresses()
                .iter()
                .map(|ip| ip.to_ip_addr())
                // A link-local IPv6 address needs its interface to be dialed; IPv4 does not.
                .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
                .collect();
            addrs.sort();
            let addrs: Vec<String> = addrs.into_iter().map(|ip| SocketAddr::new(ip, port).to_string()).collect();
            if !addrs.is_empty() {
                tracing::debug!(peer = %device.short(), ?addrs, "mDNS: found a peer");
                mesh.learn_discovered(device, &addrs, "mdns");
            }
        }
        ServiceEvent::ServiceRemoved(_, fullname) => {
            if let Some(device) = instance_device(&fullname) {
                tracing::debug!(peer = %device.short(), "mDNS: a peer said goodbye");
                mesh.forget_discovered(device, "mdns");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_carry_the_device() {
        let device = DeviceId([3; meshsync_core::device::DEVICE_ID_BYTES]);
        assert_eq!(instance_device(&format!("{device}.{SERVICE_TYPE}")), Some(device));
        assert_eq!(instance_device("printer._ipp._tcp.local."), None);
        assert_eq!(instance_device(&format!("nonsense.{SERVICE_TYPE}")), None);
    }
}
