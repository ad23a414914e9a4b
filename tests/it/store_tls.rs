//! TLS and credentials to the stores: a private redis-server on a TLS port (`tls-auth-clients yes`) and a private
//! PostgreSQL with `ssl = on`, both with certificates made for the test. Each admits the
//! sidecar only with the right CA (and, for Redis, a client certificate), and refuses it
//! otherwise — through the same settings an operator writes.

use std::time::Duration;

use credit_sidecar::config::{Config, EngineConfig};
use credit_sidecar::engine::redis::{RedisEngine, RedisSettings, RedisTls};
use credit_sidecar::settle::store::Store;

use crate::harness::{Pki, pki, redis_settings};
use crate::servers::{PostgresServer, RedisServer, free_port};

const RETENTION: i64 = 86_400_000;

/// A redis-server with a plain port (for the harness's readiness check) and a TLS port that
/// requires client certificates; returns it and the TLS URL.
fn tls_redis(pki: &Pki, dir: &std::path::Path) -> (RedisServer, String) {
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (cert, key, ca) =
        (write("redis.crt", &pki.server.0), write("redis.key", &pki.server.1), write("ca.crt", &pki.ca));
    let port = free_port().to_string();
    let args = ["--tls-port", &port, "--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca];
    let server = RedisServer::start_with(&[&args[..], &["--tls-auth-clients", "yes"]].concat());
    (server, format!("rediss://127.0.0.1:{port}/"))
}

fn settings(url: &str, tls: RedisTls) -> RedisSettings {
    RedisSettings { tls, timeout: Duration::from_secs(2), ..redis_settings(vec![url.to_owned()], false) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_admits_a_verified_server_and_a_certified_client_only() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = tls_redis(&pki, dir.path());
    let client = Some((pki.client.0.clone().into_bytes(), pki.client.1.clone().into_bytes()));
    let ca = Some(pki.ca.clone().into_bytes());

    let trusted =
        RedisEngine::connect(&settings(&url, RedisTls { ca_pem: ca.clone(), client_pem: client.clone() }), RETENTION)
            .await
            .expect("the right CA and a client certificate connect");
    trusted.ping().await.expect("and the engine answers over TLS");

    let anonymous = RedisEngine::connect(&settings(&url, RedisTls { ca_pem: ca, client_pem: None }), RETENTION).await;
    assert!(anonymous.is_err(), "no client certificate: refused by tls-auth-clients");
    let stranger = crate::harness::pki();
    let untrusted = RedisTls { ca_pem: Some(stranger.ca.into_bytes()), client_pem: client };
    assert!(RedisEngine::connect(&settings(&url, untrusted), RETENTION).await.is_err(), "a server the CA did not sign");
}

/// The files an operator names become the engine's TLS material; TLS files on a plain URL, or
/// half a client pair, are refused by name.
#[test]
fn redis_tls_settings_read_their_files_and_refuse_contradictions() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (ca, cert, key) =
        (write("ca.pem", &pki.ca), write("client.pem", &pki.client.0), write("client.key", &pki.client.1));
    let text = format!(
        "redis_url = \"rediss://redis:6380/\"\nredis_ca_file = \"{ca}\"\nredis_client_cert_file = \"{cert}\"\n\
         redis_client_key_file = \"{key}\"\n"
    );
    let EngineConfig::Redis(settings) = Config::from_toml(&text).unwrap().engine else { panic!("the Redis engine") };
    assert_eq!(settings.tls.ca_pem.as_deref(), Some(pki.ca.as_bytes()));
    assert_eq!(settings.tls.client_pem, Some((pki.client.0.clone().into_bytes(), pki.client.1.clone().into_bytes())));

    let plain = format!("redis_url = \"redis://redis:6379/\"\nredis_ca_file = \"{ca}\"\n");
    let error = Config::from_toml(&plain).unwrap_err().to_string();
    assert!(error.starts_with("configuration: redis_url: TLS files are set"), "{error}");
    let half = format!("redis_url = \"rediss://redis:6380/\"\nredis_client_cert_file = \"{cert}\"\n");
    let error = Config::from_toml(&half).unwrap_err().to_string();
    assert!(error.starts_with("configuration: redis_client_key_file: is required"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server_with_the_configured_ca() {
    let pki = pki();
    let server = PostgresServer::start_with_tls(&pki.server.0, &pki.server.1);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca).unwrap();

    // database_ca_file: the URL's sslrootcert, with sslmode=verify-full.
    let text = format!("database_url = \"{}\"\ndatabase_ca_file = \"{}\"\n", server.url(), ca.display());
    let url = Config::from_toml(&text).unwrap().settle.database_url;
    assert!(url.ends_with(&format!("?sslrootcert={}&sslmode=verify-full", ca.display())), "{url}");
    let store = Store::connect(&url).await.expect("the server the CA signed is accepted");
    store.ping().await.unwrap();

    let stranger = dir.path().join("stranger.pem");
    std::fs::write(&stranger, crate::harness::pki().ca).unwrap();
    let untrusted = format!("{}?sslmode=verify-full&sslrootcert={}", server.url(), stranger.display());
    assert!(Store::connect(&untrusted).await.is_err(), "a CA that did not sign the server is refused");
}

/// Passwords from files (a mounted Secret), never on a command line: Redis with `requirepass`,
/// PostgreSQL with a role that must log in with its password (one with `@`, `/` and a space,
/// which the URL must carry percent-encoded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };

    let redis = RedisServer::start();
    assert_eq!(redis.cli(&["CONFIG", "SET", "requirepass", "s3cret-pass"]), "OK");
    let config = |password_file: Option<&str>| {
        let mut text = format!("redis_url = \"{}\"\n", redis.url());
        if let Some(path) = password_file {
            text.push_str(&format!("redis_password_file = \"{path}\"\n"));
        }
        let EngineConfig::Redis(settings) = Config::from_toml(&text).unwrap().engine else { panic!("Redis") };
        RedisSettings { timeout: Duration::from_secs(2), ..settings }
    };
    let with = config(Some(&write("redis-password", "s3cret-pass\n")));
    assert!(!format!("{with:?}").contains("s3cret-pass"), "the password stays out of Debug output");
    RedisEngine::connect(&with, RETENTION).await.expect("the password from the file logs in").ping().await.unwrap();
    assert!(RedisEngine::connect(&config(None), RETENTION).await.is_err(), "without it: NOAUTH");

    let postgres = PostgresServer::start();
    let password = "p@ss w/rd";
    postgres.require_password("worker", password);
    let url = postgres.url().replacen("postgres://postgres@", "postgres://worker@", 1);
    let text = format!(
        "database_url = \"{url}\"\ndatabase_password_file = \"{}\"\n",
        write("database-password", &format!("{password}\n"))
    );
    let with = Config::from_toml(&text).unwrap().settle.database_url;
    Store::connect(&with).await.expect("the password from the file logs in").ping().await.unwrap();
    assert!(Store::connect(&url).await.is_err(), "without it: refused");
}
