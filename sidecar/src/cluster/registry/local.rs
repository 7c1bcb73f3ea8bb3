//! [`LocalDirectory`]: the registry of the memory broker, where the only host is this one.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    ChannelCounts, Directory, HostEntry, HostInfo, HostLoadSource, JoinedPublisher, RegistryError,
};

/// One host, this one: for the memory broker.
pub struct LocalDirectory {
    /// This host's description.
    info: HostInfo,
    /// Its numbers.
    load: Arc<dyn HostLoadSource>,
}

impl LocalDirectory {
    pub fn new(info: HostInfo, load: Arc<dyn HostLoadSource>) -> Self {
        Self { info, load }
    }
}

#[async_trait]
impl Directory for LocalDirectory {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn hosts(&self) -> Result<Vec<HostEntry>, RegistryError> {
        Ok(vec![self.info.entry(self.load.as_ref())])
    }

    async fn channel_counts(
        &self,
        channel: &str,
        _hosts: &[HostEntry],
    ) -> Result<ChannelCounts, RegistryError> {
        Ok(self.load.channel(channel))
    }

    async fn channel_publishers(
        &self,
        channel: &str,
        _hosts: &[HostEntry],
    ) -> Result<Vec<JoinedPublisher>, RegistryError> {
        let mut members = self.load.publishers(channel);
        members.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(members)
    }

    async fn channel_viewers(
        &self,
        channel: &str,
        _hosts: &[HostEntry],
    ) -> Result<Vec<JoinedPublisher>, RegistryError> {
        let mut viewers = self.load.viewers(channel);
        viewers.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(viewers)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::cluster::registry::tests::{identity, named, users, Host};
    use crate::config::HostConfig;

    #[tokio::test]
    async fn local_directory_is_this_host_with_summed_counts() {
        let mut host = Host::start().await;
        host.viewers(&[("room", 4), ("other", 1)]).await;
        let ann = identity("ann");
        let mut session = host.presence.connect(&ann);
        session.join(&ann, "room").unwrap();
        let info = HostInfo::from_config(
            &HostConfig {
                id: "solo".into(),
                ..HostConfig::default()
            },
            SocketAddr::from(([127, 0, 0, 1], 1)),
        );
        let directory = LocalDirectory::new(info, host.load.clone());
        let hosts = directory.hosts().await.unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            (
                hosts[0].id.as_str(),
                hosts[0].subscribers,
                hosts[0].publishers
            ),
            ("solo", 5, 1)
        );
        assert_eq!(
            directory.channel_counts("room", &hosts).await.unwrap(),
            ChannelCounts {
                subscribers: 4,
                publishers: 1
            }
        );
        assert_eq!(
            directory.channel_counts("none", &hosts).await.unwrap(),
            ChannelCounts::default()
        );
    }

    #[tokio::test]
    async fn the_local_directory_lists_this_hosts_members() {
        let host = Host::start().await;
        let (ann, bo) = (named("1", "ann"), named("2", "bo"));
        let mut s1 = host.presence.connect(&bo);
        let mut s2 = host.presence.connect(&ann);
        s1.join(&bo, "room").unwrap();
        s2.join(&ann, "room").unwrap();
        let info = HostInfo::from_config(
            &HostConfig::default(),
            SocketAddr::from(([127, 0, 0, 1], 1)),
        );
        let directory = LocalDirectory::new(info, host.load.clone());
        let hosts = directory.hosts().await.unwrap();
        assert_eq!(
            users(&directory.channel_publishers("room", &hosts).await.unwrap()),
            [
                ("sub:1", r#"{"name":"ann"}"#),
                ("sub:2", r#"{"name":"bo"}"#)
            ]
        );
    }
}
