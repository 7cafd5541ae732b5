//! The validating admission webhook: `kubectl apply` refuses what the
//! OpenAPI schema and CEL rules cannot express, with the same checker and the
//! same messages as `vigil validate` and the runner at start
//! (`vigil_crds::semantic`, and `semantic::check_model_ref` for a Pipeline
//! whose Model exists).
//!
//! Every replica serves it (not only the leader), over TLS with a
//! certificate the operator issues itself and keeps in a Secret of its own
//! namespace: a CA valid for ten years and a serving certificate valid for a
//! year, renewed by whichever replica first sees it within 30 days of
//! expiry. The CA goes into the `caBundle` of the
//! ValidatingWebhookConfiguration, checked again on every refresh, so a
//! configuration re-applied by Helm or Argo CD without it is repaired within
//! one interval. A Secret not marked as the operator's own (for instance one
//! cert-manager fills) is used as it is and never rewritten; its `ca.crt` is
//! still copied into the configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use chrono::{Datelike, NaiveDate, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Client};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, info, warn};
use vigil_crds::manifest::Invalid;
use vigil_crds::{Model, Pipeline, semantic};

/// Marks a Secret whose certificates the operator issued and may renew.
pub const MANAGED: &str = "vigil.dev/webhook-certificate";
const NOT_AFTER: &str = "vigil.dev/not-after";
const CA_NOT_AFTER: &str = "vigil.dev/ca-not-after";
const DNS_NAMES: &str = "vigil.dev/dns-names";
/// Days a serving certificate is valid, and days before expiry it is renewed.
const LEAF_DAYS: i64 = 365;
const RENEW_DAYS: i64 = 30;
const CA_DAYS: i64 = 3650;
const CA_NAME: &str = "Vigil admission webhook CA";
/// The API server's objects are at most about 1.5 MiB; a review wraps two.
const MAX_REVIEW_BYTES: usize = 8 << 20;

/// How the webhook is served.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address of the HTTPS listener.
    pub listen: SocketAddr,
    /// Namespace of the certificate Secret (the operator's own).
    pub namespace: String,
    /// Name of the certificate Secret.
    pub secret: String,
    /// The ValidatingWebhookConfiguration whose `caBundle` is kept current.
    pub configuration: String,
    /// Names the serving certificate is valid for: the Service's DNS names,
    /// or an address for a webhook configured by URL.
    pub hosts: Vec<String>,
    /// How often the Secret and the `caBundle` are checked.
    pub refresh: Duration,
}

/// PEM-encoded certificates and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The CA the API server trusts (`caBundle`); empty if the Secret has none.
    pub ca: String,
    /// Serving certificate chain.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// Serve the webhook until the task is dropped. Fails at start when no
/// certificate can be had (the operator then exits and says why).
pub async fn serve(opts: Options, client: Client) -> Result<()> {
    let material = ensure_certificate(&client, &opts).await?;
    let resolver = Arc::new(Resolver(RwLock::new(certified_key(&material)?)));
    sync_ca_bundle(&client, &opts.configuration, &material.ca).await;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding the webhook listener {}", opts.listen))?;
    info!(listen = %opts.listen, secret = %opts.secret, configuration = %opts.configuration, "Serving the admission webhook");
    let _refresh = crate::controller::AbortOnDrop(tokio::spawn(refresh(
        client.clone(),
        opts.clone(),
        material,
        resolver.clone(),
    )));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = listener.accept().await.context("accepting a webhook connection")?;
        let acceptor = acceptor.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => return debug!(%peer, error = %e, "TLS handshake failed"),
            };
            let service = hyper::service::service_fn(move |req| handle(req, client.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

/// Re-read the Secret (renewing it when due) and re-check the `caBundle`.
async fn refresh(client: Client, opts: Options, mut served: Material, resolver: Arc<Resolver>) {
    loop {
        tokio::time::sleep(opts.refresh).await;
        match ensure_certificate(&client, &opts).await {
            Ok(m) if m != served => match certified_key(&m) {
                Ok(key) => {
                    *resolver.0.write().unwrap_or_else(|p| p.into_inner()) = key;
                    info!(secret = %opts.secret, "Serving a new webhook certificate");
                    served = m;
                }
                Err(e) => {
                    warn!(secret = %opts.secret, error = %e, "The webhook certificate in the Secret is unusable; keeping the current one")
                }
            },
            Ok(_) => {}
            Err(e) => warn!(secret = %opts.secret, error = %e, "Could not check the webhook certificate"),
        }
        sync_ca_bundle(&client, &opts.configuration, &served.ca).await;
    }
}

#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn certified_key(m: &Material) -> Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(m.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err(anyhow!("tls.crt holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(m.key.as_bytes()).map_err(|e| anyhow!("tls.key: {e}"))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| anyhow!("tls.key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

// ---- admission ------------------------------------------------------------

type Body = Full<Bytes>;

async fn handle(req: Request<Incoming>, client: Client) -> Result<Response<Body>, std::convert::Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.method() == Method::GET && req.uri().path() == "/healthz" {
        return Ok(reply(StatusCode::OK, "ok\n".into()));
    }
    if req.method() != Method::POST || req.uri().path() != "/validate" {
        return Ok(reply(StatusCode::NOT_FOUND, "POST an AdmissionReview to /validate\n".into()));
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n"))),
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Ok(reply(StatusCode::BAD_REQUEST, format!("not an AdmissionReview: {e}\n"))),
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return Ok(reply(StatusCode::BAD_REQUEST, format!("not an AdmissionReview request: {e}\n")));
        }
    };
    let response = review_request(&request, &client).await;
    let mut ok = reply(
        StatusCode::OK,
        serde_json::to_string(&response.into_review()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
    );
    ok.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(ok)
}

/// Admit or refuse one request.
pub async fn review_request(request: &AdmissionRequest<DynamicObject>, client: &Client) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(object) = &request.object else {
        return response;
    };
    // An update that leaves the spec as it was (a finalizer, a label, an
    // annotation) is not the user's change to judge: refusing it would stop
    // the operator from adding or removing its finalizer on a Pipeline
    // admitted before (by an older operator, or while the webhook was down).
    if let Some(old) = &request.old_object {
        if old.data.get("spec") == object.data.get("spec") {
            return response;
        }
    }
    // The API server has checked the schema and the CEL rules before it
    // calls a validating webhook; what is left is what they cannot express.
    // A spec this operator cannot read (a newer CRD with fields it does not
    // know, during an upgrade) is admitted with a warning, not refused.
    let value = serde_json::to_value(object).unwrap_or_default();
    let kind = request.kind.kind.as_str();
    let name = request.name.clone();
    let invalid =
        |errors: Vec<String>| Invalid { kind: kind.to_string(), name: name.clone(), errors }.to_string();
    let p = match kind {
        "Pipeline" => match serde_json::from_value::<Pipeline>(value) {
            Ok(p) => p,
            Err(e) => {
                return with_warning(
                    response,
                    format!("this operator cannot read the Pipeline ({e}); not checked"),
                );
            }
        },
        "Model" => {
            return match serde_json::from_value::<Model>(value) {
                Ok(m) => match semantic::check_model(&m.spec) {
                    errors if errors.is_empty() => response,
                    errors => response.deny(invalid(errors)),
                },
                Err(e) => {
                    with_warning(response, format!("this operator cannot read the Model ({e}); not checked"))
                }
            };
        }
        _ => return response,
    };
    let errors = semantic::check_pipeline(&p.spec);
    if !errors.is_empty() {
        return response.deny(invalid(errors));
    }
    let Some(model_ref) = &p.spec.detector.model_ref else {
        return response;
    };
    let namespace = request.namespace.clone().unwrap_or_else(|| "default".into());
    let models: Api<Model> = Api::namespaced(client.clone(), &namespace);
    match models.get_opt(&model_ref.name).await {
        Ok(Some(model)) => {
            let errors = semantic::check_model_ref(&p.spec, &model_ref.name, &model.spec);
            if errors.is_empty() {
                return response;
            }
            response.deny(invalid(errors))
        }
        // GitOps applies in any order: a Pipeline may come before its Model.
        // The operator reports ModelNotFound until it exists.
        Ok(None) => with_warning(
            response,
            format!(
                "Model {} does not exist in namespace {namespace} yet; the Pipeline will not run until it does",
                model_ref.name
            ),
        ),
        Err(e) => with_warning(
            response,
            format!("Model {} could not be read ({e}); its features were not checked", model_ref.name),
        ),
    }
}

fn with_warning(mut r: AdmissionResponse, warning: String) -> AdmissionResponse {
    r.warnings.get_or_insert_with(Vec::new).push(warning);
    r
}

// ---- certificates ---------------------------------------------------------

/// The certificate to serve: the Secret's, issued (or renewed) first when the
/// operator manages it and it is missing, expiring, or for other names.
pub async fn ensure_certificate(client: &Client, opts: &Options) -> Result<Material> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let today = Utc::now().date_naive();
    for _ in 0..5 {
        let current =
            api.get_opt(&opts.secret).await.with_context(|| format!("reading Secret {}", opts.secret))?;
        if let Some(s) = &current {
            let data = secret_data(s);
            let managed = annotation(s, MANAGED).is_some();
            let material = Material {
                ca: data.get("ca.crt").cloned().unwrap_or_default(),
                cert: data.get("tls.crt").cloned().unwrap_or_default(),
                key: data.get("tls.key").cloned().unwrap_or_default(),
            };
            if !managed {
                if material.cert.is_empty() || material.key.is_empty() {
                    return Err(anyhow!(
                        "Secret {}/{} has no tls.crt and tls.key, and is not the operator's to fill (annotation {MANAGED} absent)",
                        opts.namespace,
                        opts.secret
                    ));
                }
                return Ok(material);
            }
            let fresh = date(s, NOT_AFTER).is_some_and(|d| (d - today).num_days() > RENEW_DAYS)
                && annotation(s, DNS_NAMES) == Some(opts.hosts.join(","));
            if fresh && certified_key(&material).is_ok() {
                return Ok(material);
            }
        }
        // Keep the CA (and so the caBundle) while it outlives the new leaf.
        let reusable_ca = current.as_ref().and_then(|s| {
            let data = secret_data(s);
            let long_enough =
                date(s, CA_NOT_AFTER).is_some_and(|d| (d - today).num_days() > LEAF_DAYS + RENEW_DAYS);
            Some((data.get("ca.crt")?.clone(), data.get("ca.key")?.clone())).filter(|_| long_enough)
        });
        let (material, ca_key, ca_not_after) = issue(&opts.hosts, reusable_ca.as_ref(), today)?;
        let ca_not_after = match (&reusable_ca, &current) {
            (Some(_), Some(s)) => annotation(s, CA_NOT_AFTER).unwrap_or_default(),
            _ => ca_not_after.to_string(),
        };
        // Owned by the webhook configuration, so it goes when the chart
        // that made the configuration is uninstalled.
        let owner = owner_reference(client, &opts.configuration).await;
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(opts.secret.clone()),
                namespace: Some(opts.namespace.clone()),
                resource_version: current.as_ref().and_then(|s| s.metadata.resource_version.clone()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".to_string(), "vigil".to_string()),
                    ("app.kubernetes.io/component".to_string(), "webhook".to_string()),
                ])),
                owner_references: owner.map(|o| vec![o]),
                annotations: Some(BTreeMap::from([
                    (MANAGED.to_string(), "true".to_string()),
                    (NOT_AFTER.to_string(), (today + chrono::Days::new(LEAF_DAYS as u64)).to_string()),
                    (CA_NOT_AFTER.to_string(), ca_not_after),
                    (DNS_NAMES.to_string(), opts.hosts.join(",")),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            ..Secret::default()
        };
        secret.string_data = Some(BTreeMap::from([
            ("ca.crt".to_string(), material.ca.clone()),
            ("ca.key".to_string(), ca_key),
            ("tls.crt".to_string(), material.cert.clone()),
            ("tls.key".to_string(), material.key.clone()),
        ]));
        let written = match &current {
            None => api.create(&PostParams::default(), &secret).await,
            Some(_) => api.replace(&opts.secret, &PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                info!(secret = %opts.secret, hosts = ?opts.hosts, new_ca = reusable_ca.is_none(), "Issued the webhook certificate");
                return Ok(material);
            }
            // Another replica wrote it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("writing Secret {}/{}", opts.namespace, opts.secret));
            }
        }
    }
    Err(anyhow!("Secret {}/{} kept changing while it was being written", opts.namespace, opts.secret))
}

async fn owner_reference(client: &Client, configuration: &str) -> Option<OwnerReference> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = api.get_opt(configuration).await.ok()??;
    Some(OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: "ValidatingWebhookConfiguration".into(),
        name: configuration.to_string(),
        uid: config.metadata.uid?,
        ..OwnerReference::default()
    })
}

fn annotation(s: &Secret, key: &str) -> Option<String> {
    s.metadata.annotations.as_ref()?.get(key).cloned()
}

fn date(s: &Secret, key: &str) -> Option<NaiveDate> {
    annotation(s, key)?.parse().ok()
}

fn secret_data(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

macro_rules! ymd {
    ($d:expr) => {{
        let d: NaiveDate = $d;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    }};
}

fn ca_params(today: NaiveDate) -> Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, CA_NAME);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    // A day back, for clocks behind ours.
    params.not_before = ymd!(today - chrono::Days::new(1));
    params.not_after = ymd!(today + chrono::Days::new(CA_DAYS as u64));
    Ok(params)
}

/// Issue a serving certificate for `hosts`, signed by the given CA (PEM
/// certificate and key) or by a new one. Returns the material, the CA's key
/// and the CA's expiry.
pub fn issue(
    hosts: &[String],
    ca: Option<&(String, String)>,
    today: NaiveDate,
) -> Result<(Material, String, NaiveDate)> {
    let ca_key = match ca {
        Some((_, key)) => rcgen::KeyPair::from_pem(key).context("ca.key")?,
        None => rcgen::KeyPair::generate()?,
    };
    let params = ca_params(today)?;
    let ca_pem = match ca {
        Some((cert, _)) => cert.clone(),
        None => params.self_signed(&ca_key)?.pem(),
    };
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let mut leaf = rcgen::CertificateParams::new(hosts.to_vec())?;
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, hosts.first().cloned().unwrap_or_default());
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.not_before = ymd!(today - chrono::Days::new(1));
    leaf.not_after = ymd!(today + chrono::Days::new(LEAF_DAYS as u64));
    leaf.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    let material = Material { ca: ca_pem, cert: cert.pem(), key: key.serialize_pem() };
    Ok((material, ca_key_pem, today + chrono::Days::new(CA_DAYS as u64)))
}

/// Put the CA into every webhook of the configuration that lacks it. A
/// missing configuration is not an error (the webhook is optional); a
/// failure is retried on the next refresh.
pub async fn sync_ca_bundle(client: &Client, configuration: &str, ca: &str) {
    if ca.is_empty() {
        return;
    }
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mut config = match api.get_opt(configuration).await {
        Ok(Some(c)) => c,
        Ok(None) => return debug!(%configuration, "No ValidatingWebhookConfiguration to keep current"),
        Err(e) => {
            return warn!(%configuration, error = %e, "Could not read the ValidatingWebhookConfiguration");
        }
    };
    let bundle = ByteString(ca.as_bytes().to_vec());
    let mut changed = 0;
    for w in config.webhooks.iter_mut().flatten() {
        if w.client_config.ca_bundle.as_ref() != Some(&bundle) {
            w.client_config.ca_bundle = Some(bundle.clone());
            changed += 1;
        }
    }
    if changed == 0 {
        return;
    }
    let pp = PostParams { field_manager: Some("vigil-operator".into()), ..PostParams::default() };
    match api.replace(configuration, &pp, &config).await {
        Ok(_) => info!(%configuration, webhooks = changed, "Updated the webhook caBundle"),
        Err(e) => {
            warn!(%configuration, error = %e, "Could not update the webhook caBundle; retrying on the next refresh")
        }
    }
}
