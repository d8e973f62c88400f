//! The S3 backend against moto's S3 server (real S3 protocol: SigV4, If-None-Match,
//! If-Match), started on a free port and stopped by PID.

use std::process::Command;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, UpdateVersion};

use crate::common;
use crate::common::moto::Moto;

#[tokio::test]
async fn s3_conditional_puts_fence_writers() {
    let moto = Moto::start();
    let store = moto.store("netsy-test", "clusters/prod");

    let seg = Path::from("epochs/1/wal/00000000000000000001-00000000000000000010.seg");
    store.put_opts(&seg, "frames".into(), PutMode::Create.into()).await.unwrap();
    let again = store.put_opts(&seg, "stale leader".into(), PutMode::Create.into()).await;
    assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
    assert_eq!(store.get(&seg).await.unwrap().bytes().await.unwrap(), "frames");

    let cluster = Path::from("cluster.json");
    let v1 = store
        .put_opts(&cluster, "{\"epoch\":1}".into(), PutMode::Create.into())
        .await
        .unwrap();
    let v1 = UpdateVersion {
        e_tag: v1.e_tag,
        version: v1.version,
    };
    store
        .put_opts(&cluster, "{\"epoch\":2}".into(), PutMode::Update(v1.clone()).into())
        .await
        .unwrap();
    // A writer still holding the old etag loses.
    let stale = store.put_opts(&cluster, "{\"epoch\":2}".into(), PutMode::Update(v1).into()).await;
    assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
    assert_eq!(store.get(&cluster).await.unwrap().bytes().await.unwrap(), "{\"epoch\":2}");

    // Everything lives under the key prefix.
    let listed: Vec<_> = futures::StreamExt::collect::<Vec<_>>(store.list(None)).await;
    assert_eq!(listed.len(), 2);
}

/// Reads an object's body and its storage class and encryption with boto3 (moto's
/// dependency, in the same venv): an S3 client independent of object_store.
fn boto3_object(port: u16, bucket: &str, key: &str) -> serde_json::Value {
    let script = format!(
        r#"
import boto3, json
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:{port}", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
o = s3.get_object(Bucket="{bucket}", Key="{key}")
print(json.dumps({{"body": o["Body"].read().decode(), "storage_class": o.get("StorageClass"),
                  "sse": o.get("ServerSideEncryption")}}))
"#
    );
    let out = Command::new(common::etcd_bin_dir().join("python"))
        .args(["-c", &script])
        .output()
        .expect("venv python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A node on S3 (with SSE and a storage class) loses its disk under object-storage
/// durability and comes back from the bucket with every acknowledged write.
#[tokio::test]
async fn node_on_s3_restores_from_the_bucket() {
    let moto = Moto::start();
    moto.create_bucket("netsy-node");
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let storage = format!(
        r#"{{ "provider": "s3", "bucket_name": "netsy-node", "key_prefix": "clusters/a", "region": "us-east-1",
             "endpoint": "http://127.0.0.1:{}", "force_path_style": true,
             "storage_class": "STANDARD_IA", "sse": "AES256" }}"#,
        moto.port
    );
    let mut n = common::Netsy::start_with_storage(Some(&storage), r#""durability": "object-storage","#);
    let mut c = n.client().await;
    let mut acked = Vec::new();
    for i in 0..200 {
        let r = c.put(format!("k{i:03}"), format!("v{i}"), None).await.unwrap();
        acked.push(r.header().unwrap().revision());
    }
    n.kill9();
    n.wipe();
    n.spawn();
    assert!(n.log().contains("rebuilt from object storage"), "{}", n.log());
    let mut c = n.client().await;
    let all = c.get("k", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(all.count(), 200);
    for (i, kv) in all.kvs().iter().enumerate() {
        assert_eq!(kv.value_str().unwrap(), format!("v{i}"));
        assert_eq!(kv.mod_revision(), acked[i]);
    }
    let cluster = boto3_object(moto.port, "netsy-node", "clusters/a/cluster.json");
    let manifest: serde_json::Value = serde_json::from_str(cluster["body"].as_str().unwrap()).unwrap();
    assert_eq!(manifest["epoch"], 2, "{cluster}");
    assert_eq!(cluster["storage_class"], "STANDARD_IA", "{cluster}");
    assert_eq!(cluster["sse"], "AES256", "{cluster}");
}

/// The fencing race in its deterministic form on real S3 conditional puts: two nodes read
/// `cluster.json` at epoch 1 and both try to open epoch 2 with that version; exactly the
/// first wins. (moto does not make check-and-write atomic across its threads, so truly
/// concurrent puts would test moto, not netsy.) Member registration read-modify-writes
/// with If-Match and keeps ids stable.
#[tokio::test]
async fn s3_stale_writers_lose_the_epoch_race() {
    use netsy::archive::manifest::{self, ClusterManifest};
    let moto = Moto::start();
    let store = moto.store("netsy-race", "");

    let a = manifest::register_member(store.as_ref(), "race", "netsy-0", None).await.unwrap();
    let b = manifest::register_member(store.as_ref(), "race", "netsy-1", None).await.unwrap();
    assert_eq!((a.raft_id, b.raft_id), (1, 2));
    let a2 = manifest::register_member(store.as_ref(), "race", "netsy-0", None).await.unwrap();
    assert_eq!((a2.member_id, a2.raft_id), (a.member_id, 3), "new incarnation, same member");

    let path = Path::from(manifest::CLUSTER);
    assert!(manifest::write(store.as_ref(), &path, &ClusterManifest::new("race", 1), None)
        .await
        .unwrap());
    assert!(
        !manifest::write(store.as_ref(), &path, &ClusterManifest::new("race", 1), None)
            .await
            .unwrap(),
        "create-only"
    );
    let seen_by_first = manifest::read_cluster(store.as_ref(), "race").await.unwrap().unwrap();
    let seen_by_second = manifest::read_cluster(store.as_ref(), "race").await.unwrap().unwrap();
    let first = ClusterManifest::new("race", 2);
    assert!(manifest::write(store.as_ref(), &path, &first, Some(&seen_by_first.version))
        .await
        .unwrap());
    assert!(
        !manifest::write(
            store.as_ref(),
            &path,
            &ClusterManifest::new("race", 2),
            Some(&seen_by_second.version)
        )
        .await
        .unwrap(),
        "the second node's version is stale"
    );
    assert_eq!(manifest::read_cluster(store.as_ref(), "race").await.unwrap().unwrap().value, first);
}
