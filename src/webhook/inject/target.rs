//! What the sidecar probes when no `sidewatch.io/target` says: exactly what the kubelet probes
//! for the app container (pkg/kubelet/prober): its readinessProbe, else its livenessProbe, else
//! its startupProbe; httpGet with its scheme, host (default the pod's IP), port (named ports
//! looked up in the container, as the kubelet does), path (a leading slash added, the query
//! kept), headers (`Host` included) and no certificate verification; tcpSocket; grpc with its
//! service. An exec probe is not guessed at. With no probe at all, the first TCP containerPort
//! is connected to.

use serde_json::{json, Value};

/// The host the kubelet probes when a probe names none: the pod's IP, which the sidecar reads
/// from its `POD_IP` variable (downward API `status.podIP`).
pub const POD_IP: &str = "${POD_IP}";

/// The target the sidecar gets, and how it was found.
#[derive(Debug)]
pub struct Derived {
    /// One entry of `probes` in the sidecar's config, as JSON.
    pub probe: Value,
    /// Where it came from and what it is, for the pod's annotation.
    pub described: String,
    /// The TCP port probed, if any (a Unix socket has none).
    pub port: Option<u16>,
    /// What was not as the kubelet's own probe, or was a fallback: said as a warning.
    pub notes: Vec<String>,
}

const PROBES: [&str; 3] = ["readinessProbe", "livenessProbe", "startupProbe"];

/// The app container's target, or why there is none to take.
pub fn derive(app: &Value) -> Result<Derived, String> {
    let name = app["name"].as_str().unwrap_or("?");
    let present: Vec<(&str, &Value)> = PROBES
        .iter()
        .filter_map(|kind| app.get(*kind).filter(|p| p.is_object()).map(|p| (*kind, p)))
        .collect();
    for (i, (kind, probe)) in present.iter().enumerate() {
        let from = format!("{kind} of container {name:?}");
        if probe.get("exec").is_some_and(|e| !e.is_null()) {
            // Readiness decides what the kubelet does with the pod: another probe of the app
            // would be a guess at what its exec command checks.
            if *kind == "readinessProbe" || i + 1 == present.len() {
                return Err(format!(
                    "the {from} is an exec command, which a sidecar cannot run: set \
                     sidewatch.io/target to what sidewatch should probe"
                ));
            }
            continue;
        }
        let mut derived = from_probe(probe, app).map_err(|e| format!("{from}: {e}"))?;
        derived.described = format!("{} from the {from}", derived.described);
        if *kind != "readinessProbe" {
            derived.notes.push(format!(
                "no readinessProbe: watching what the {from} checks"
            ));
        }
        return Ok(derived);
    }
    let tcp_port = app["ports"].as_array().into_iter().flatten().find(|p| {
        p["protocol"].as_str().unwrap_or("TCP") == "TCP" && p["containerPort"].as_u64().is_some()
    });
    match tcp_port.and_then(|p| p["containerPort"].as_u64()) {
        Some(port) => {
            let port = checked_port(port)?;
            Ok(Derived {
                probe: json!({"name": "app", "tcp": {"address": format!("{POD_IP}:{port}")}}),
                described: format!(
                    "tcp://{POD_IP}:{port}, the first TCP containerPort of container {name:?} \
                     (it has no probe)"
                ),
                port: Some(port),
                notes: vec![format!(
                    "container {name:?} has no probe: watching that its port {port} accepts \
                     connections; set sidewatch.io/target for more"
                )],
            })
        }
        None => Err(format!(
            "container {name:?} has no probe and no TCP containerPort: set sidewatch.io/target"
        )),
    }
}

/// One Kubernetes probe as the kubelet runs it.
fn from_probe(probe: &Value, container: &Value) -> Result<Derived, String> {
    let timeout = probe["timeoutSeconds"]
        .as_u64()
        .unwrap_or(1)
        .clamp(1, 24 * 60 * 60);
    let handler = |key: &str| probe.get(key).filter(|v| v.is_object());
    let mut derived = if let Some(get) = handler("httpGet") {
        http_get(get, container)?
    } else if let Some(tcp) = handler("tcpSocket") {
        tcp_socket(tcp, container)?
    } else if let Some(grpc) = handler("grpc") {
        grpc_check(grpc)?
    } else {
        return Err("no httpGet, tcpSocket, grpc or exec handler".into());
    };
    derived.probe["name"] = "app".into();
    derived.probe["timeout"] = format!("{timeout}s").into();
    Ok(derived)
}

/// An `httpGet` handler: the URL the kubelet asks, its headers, and how it treats TLS and HTTP/2.
fn http_get(get: &Value, container: &Value) -> Result<Derived, String> {
    let port = resolve_port(&get["port"], container)?;
    let scheme = match get["scheme"].as_str().unwrap_or("HTTP") {
        "HTTP" => "http",
        "HTTPS" => "https",
        other => {
            return Err(format!(
                "httpGet.scheme {other:?} is neither HTTP nor HTTPS"
            ))
        }
    };
    let host = get["host"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map_or_else(|| POD_IP.to_owned(), bracket);
    let url = format!(
        "{scheme}://{host}:{port}{}",
        kubelet_path(get["path"].as_str())
    );
    let mut http = json!({"url": url});
    let mut described = url.clone();
    let headers: Vec<Value> = get["httpHeaders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            Some(json!({"name": h["name"].as_str()?, "value": h["value"].as_str().unwrap_or("")}))
        })
        .collect();
    if !headers.is_empty() {
        let names: Vec<&str> = headers.iter().filter_map(|h| h["name"].as_str()).collect();
        described.push_str(&format!(" with headers {}", names.join(", ")));
        http["headers"] = headers.into();
    }
    if scheme == "https" {
        // The kubelet does not verify the app's certificate: an app with one for its Service
        // name (or a self-signed one) passes its probe, so it must pass ours.
        http["insecure_skip_verify"] = true.into();
        described.push_str(", certificate not verified (as the kubelet)");
    }
    // `httpGet.protocol` (Kubernetes after 1.36, not in any client model yet): HTTP2 is h2c.
    if get["protocol"].as_str() == Some("HTTP2") {
        http["http_version"] = "2".into();
        described.push_str(", HTTP/2");
    }
    Ok(Derived {
        probe: json!({"http": http}),
        described,
        port: Some(port),
        notes: Vec::new(),
    })
}

fn tcp_socket(tcp: &Value, container: &Value) -> Result<Derived, String> {
    let port = resolve_port(&tcp["port"], container)?;
    let host = tcp["host"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map_or_else(|| POD_IP.to_owned(), bracket);
    let address = format!("{host}:{port}");
    Ok(Derived {
        probe: json!({"tcp": {"address": address}}),
        described: format!("tcp://{address}"),
        port: Some(port),
        notes: Vec::new(),
    })
}

fn grpc_check(grpc: &Value) -> Result<Derived, String> {
    // gRPC probes take a number only (the API refuses a name).
    let port = grpc["port"]
        .as_u64()
        .ok_or("grpc.port is not a number")
        .and_then(|p| checked_port(p).map_err(|_| "grpc.port is out of range"))?;
    // `service` may be null, or absent: both ask about the server as a whole.
    let service = grpc["service"].as_str().unwrap_or("");
    let address = format!("{POD_IP}:{port}");
    let mut check = json!({"address": address, "service": service});
    let mut described = format!("grpc://{address}/{service}");
    // `grpc.mode` (Kubernetes after 1.36): TLS, with the certificate not verified.
    if grpc["mode"].as_str() == Some("TLS") {
        check["tls"] = true.into();
        check["insecure_skip_verify"] = true.into();
        described = format!("grpcs://{address}/{service}, certificate not verified");
    }
    Ok(Derived {
        probe: json!({"grpc": check}),
        described,
        port: Some(port),
        notes: Vec::new(),
    })
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(port: &Value, container: &Value) -> Result<u16, String> {
    if let Some(n) = port.as_u64() {
        return checked_port(n);
    }
    let Some(name) = port.as_str() else {
        return Err("the port is neither a number nor a name".into());
    };
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .ok_or_else(|| {
            format!(
                "port {name:?} is not a port of the container, so the kubelet's probe fails too"
            )
        })
        .and_then(checked_port)
}

fn checked_port(n: u64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {n} is out of range"))
}

/// The path as the kubelet sends it: `/` when empty, a leading slash added (Go's URL writer adds
/// it when the URL has a host), the query kept.
fn kubelet_path(path: Option<&str>) -> String {
    match path.unwrap_or("") {
        "" => "/".to_owned(),
        p if p.starts_with('/') => p.to_owned(),
        p => format!("/{p}"),
    }
}

/// An IPv6 literal in brackets, as a URL and `host:port` want it.
fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(probe: Value) -> Value {
        json!({"name": "web", "image": "x",
            "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                      {"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9000}],
            "readinessProbe": probe})
    }

    fn target(probe: Value) -> Value {
        derive(&container(probe)).unwrap().probe
    }

    #[test]
    fn http_probes_keep_scheme_host_port_path_query_and_headers() {
        let p = target(
            json!({"httpGet": {"path": "healthz?full=true", "port": "admin",
            "scheme": "HTTPS", "host": "fd00::1",
            "httpHeaders": [{"name": "Host", "value": "shop.example"}, {"name": "X-A", "value": "1"}]},
            "timeoutSeconds": 5}),
        );
        assert_eq!(p["http"]["url"], "https://[fd00::1]:9000/healthz?full=true");
        assert_eq!(p["http"]["headers"][0]["value"], "shop.example");
        assert_eq!(p["http"]["headers"][1]["name"], "X-A");
        assert_eq!(p["http"]["insecure_skip_verify"], true);
        assert_eq!(p["timeout"], "5s");
        let p = target(json!({"httpGet": {"port": 8080}}));
        assert_eq!(p["http"]["url"], "http://${POD_IP}:8080/");
        assert_eq!(p["timeout"], "1s");
    }

    #[test]
    fn tcp_and_grpc_probes_keep_their_port_and_service() {
        let p = target(json!({"tcpSocket": {"port": 9000}}));
        assert_eq!(p["tcp"]["address"], "${POD_IP}:9000");
        let p = target(json!({"grpc": {"port": 9555, "service": null}}));
        assert_eq!(
            (&p["grpc"]["address"], &p["grpc"]["service"]),
            (&json!("${POD_IP}:9555"), &json!(""))
        );
        let p = target(json!({"grpc": {"port": 9555, "service": "shop.Cart", "mode": "TLS"}}));
        assert_eq!(p["grpc"]["service"], "shop.Cart");
        assert_eq!(p["grpc"]["tls"], true);
    }

    #[test]
    fn what_the_kubelet_cannot_probe_is_refused_not_guessed() {
        let err = derive(&container(
            json!({"httpGet": {"path": "/", "port": "metrics"}}),
        ))
        .unwrap_err();
        assert!(err.contains("\"metrics\" is not a port"), "{err}");
        let err = derive(&container(json!({"exec": {"command": ["true"]}}))).unwrap_err();
        assert!(
            err.contains("exec") && err.contains("sidewatch.io/target"),
            "{err}"
        );
    }

    #[test]
    fn without_readiness_the_liveness_probe_then_the_first_tcp_port_serve() {
        let mut c = container(Value::Null);
        c.as_object_mut().unwrap().remove("readinessProbe");
        c["livenessProbe"] = json!({"tcpSocket": {"port": "http"}});
        let d = derive(&c).unwrap();
        assert_eq!(d.probe["tcp"]["address"], "${POD_IP}:8080");
        assert!(d.notes[0].contains("livenessProbe"), "{:?}", d.notes);
        c.as_object_mut().unwrap().remove("livenessProbe");
        let d = derive(&c).unwrap();
        // The first port is UDP: the first TCP one is taken.
        assert_eq!(d.probe["tcp"]["address"], "${POD_IP}:8080");
        assert_eq!(d.port, Some(8080));
    }
}
