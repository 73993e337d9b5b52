//! Prefix delegation on top of LocalStack, which accepts prefix requests and ignores them. The fault proxy
//! ([`crate::ec2faults`]) passes every request through [`intercept`], which makes LocalStack look like EC2 for
//! prefixes, from a book of its own:
//! - `AssignPrivateIpAddresses` with `Ipv4PrefixCount` is answered here: aligned /28s of the ENI's subnet that hold
//!   no address in use (asked of LocalStack) and no other prefix, highest first, all or nothing
//!   (`InsufficientCidrBlocks` otherwise, as EC2 answers for a fragmented subnet);
//! - `UnassignPrivateIpAddresses` with `Ipv4Prefix.N` is answered here;
//! - `CreateNetworkInterface` with `Ipv4PrefixCount` goes to LocalStack without it, and the new ENI gets its
//!   prefixes here;
//! - `DescribeNetworkInterfaces` answers carry each ENI's `ipv4PrefixSet`; `DeleteNetworkInterface` forgets them.
//!
//! It also makes an ENI look like one without any private IPv4 address ([`PrefixBook::without_ipv4`]), as an
//! EFA-only interface or an IPv6-only ENI is, which LocalStack cannot create: its addresses are cut from
//! `DescribeNetworkInterfaces` answers.
//!
//! Tests that need a fragmented subnet make prefix requests fail with [`crate::ec2faults::Ec2FaultProxy::fail`]
//! on `AssignPrivateIpAddresses:prefix` / `CreateNetworkInterface:prefix`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use ipnet::Ipv4Net;

use crate::ec2faults::{Fault, error_response, forward};

/// Prefixes delegated to each ENI.
#[derive(Default)]
pub struct PrefixBook {
    held: Mutex<BTreeMap<String, Vec<Ipv4Net>>>,
    /// One pick at a time (nodes of one sim share a subnet): look-up and booking are one step.
    picking: tokio::sync::Mutex<()>,
    /// Each ENI's subnet CIDR, asked of LocalStack once (it never changes): a pick late in a long test run,
    /// with LocalStack holding thousands of ENIs, stays quick.
    subnet_of: Mutex<BTreeMap<String, (String, Ipv4Net)>>,
    /// ENIs shown without private IPv4 addresses.
    ipv4_less: Mutex<BTreeSet<String>>,
}

impl PrefixBook {
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Ipv4Net>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on `eni_id` is described with no private IPv4 address.
    pub fn without_ipv4(&self, eni_id: &str) {
        self.ipv4_less.lock().unwrap_or_else(|p| p.into_inner()).insert(eni_id.to_string());
    }

    /// The prefixes delegated to `eni_id`.
    pub fn of(&self, eni_id: &str) -> Vec<Ipv4Net> {
        self.held().get(eni_id).cloned().unwrap_or_default()
    }
}

/// The URL-decoded fields of an EC2 query body.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

pub fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Whether the request asks for or gives back prefixes.
pub fn is_prefix_request(form: &[(String, String)]) -> bool {
    form.iter().any(|(k, _)| k == "Ipv4PrefixCount" || k.starts_with("Ipv4Prefix."))
}

/// Every `<tag>value</tag>` in `xml`.
fn values<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.match_indices(&open)
        .filter_map(|(i, _)| {
            let start = i + open.len();
            xml[start..].find(&close).map(|end| &xml[start..start + end])
        })
        .collect()
}

fn xml_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

fn prefix_set(tag: &str, prefixes: &[Ipv4Net]) -> String {
    let items: String = prefixes.iter().map(|p| format!("<item><ipv4Prefix>{p}</ipv4Prefix></item>")).collect();
    format!("<{tag}>{items}</{tag}>")
}

/// Asks LocalStack (form `pairs`) and returns the answer's text.
async fn ask(upstream: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    let req = hyper::Request::post("/")
        .header("host", upstream)
        .header("content-type", "application/x-www-form-urlencoded")
        // LocalStack takes the region from the credential scope.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(())
        .map_err(|e| e.to_string())?;
    let (parts, ()) = req.into_parts();
    let resp = forward(upstream, parts, Bytes::from(body)).await?;
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The ENI's subnet and its CIDR.
async fn subnet_of(upstream: &str, book: &PrefixBook, eni_id: &str) -> Result<(String, Ipv4Net), String> {
    if let Some(known) = book.subnet_of.lock().unwrap_or_else(|p| p.into_inner()).get(eni_id) {
        return Ok(known.clone());
    }
    let eni = ask(
        upstream,
        &[("Action", "DescribeNetworkInterfaces"), ("Version", "2016-11-15"), ("NetworkInterfaceId.1", eni_id)],
    )
    .await?;
    let subnet_id =
        values(&eni, "subnetId").first().map(|s| s.to_string()).ok_or_else(|| format!("no ENI {eni_id}"))?;
    let subnet =
        ask(upstream, &[("Action", "DescribeSubnets"), ("Version", "2016-11-15"), ("SubnetId.1", &subnet_id)]).await?;
    let cidr: Ipv4Net = values(&subnet, "cidrBlock")
        .first()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no CIDR for {subnet_id}"))?;
    book.subnet_of.lock().unwrap_or_else(|p| p.into_inner()).insert(eni_id.to_string(), (subnet_id.clone(), cidr));
    Ok((subnet_id, cidr))
}

/// Picks `count` free aligned /28s of the ENI's subnet, or None when the subnet has fewer.
async fn pick(upstream: &str, book: &PrefixBook, eni_id: &str, count: usize) -> Result<Option<Vec<Ipv4Net>>, String> {
    let (subnet_id, cidr) = subnet_of(upstream, book, eni_id).await?;
    // In a /20 or larger, LocalStack draws addresses from the lower half only (scripts/localstack_main.py): prefixes
    // come from the upper half, where no address of LocalStack's can be, so there is nothing to ask it.
    let area = if cidr.prefix_len() <= 20 {
        cidr.subnets(cidr.prefix_len() + 1).map_err(|e| e.to_string())?.nth(1)
    } else {
        None
    };
    let used: BTreeSet<Ipv4Addr> = if area.is_some() {
        BTreeSet::new()
    } else {
        let in_subnet = ask(
            upstream,
            &[
                ("Action", "DescribeNetworkInterfaces"),
                ("Version", "2016-11-15"),
                ("Filter.1.Name", "subnet-id"),
                ("Filter.1.Value.1", &subnet_id),
            ],
        )
        .await?;
        values(&in_subnet, "privateIpAddress").iter().filter_map(|s| s.parse().ok()).collect()
    };
    let taken: Vec<Ipv4Net> = book.held().values().flatten().copied().collect();
    let blocks = area.unwrap_or(cidr).subnets(28).map_err(|e| e.to_string())?.collect::<Vec<_>>();
    let mut out = Vec::new();
    // Not the subnet's first /28 (EC2 reserves the network address and the next three) nor its last (the broadcast).
    let reserved = |b: &Ipv4Net| b.contains(&cidr.network()) || b.contains(&cidr.broadcast());
    for b in blocks.iter().rev().filter(|b| !reserved(b)) {
        if out.len() == count {
            break;
        }
        if used.iter().any(|ip| b.contains(ip)) || taken.iter().any(|t| t.contains(&b.network())) {
            continue;
        }
        out.push(*b);
    }
    Ok((out.len() == count).then_some(out))
}

fn insufficient(subnet_of: &str) -> Response<Full<Bytes>> {
    error_response(&Fault {
        status: 400,
        code: "InsufficientCidrBlocks".into(),
        message: format!("There are not enough free cidr blocks in the subnet of {subnet_of} to satisfy the request."),
    })
}

/// Answers, or forwards and completes, one EC2 request (see the module header).
pub async fn intercept(
    book: &PrefixBook,
    upstream: &str,
    mut parts: hyper::http::request::Parts,
    body: Bytes,
    f: &[(String, String)],
    act: &str,
) -> Result<Response<Full<Bytes>>, String> {
    match act {
        "AssignPrivateIpAddresses" if is_prefix_request(f) => {
            let eni = field(f, "NetworkInterfaceId").unwrap_or_default().to_string();
            let count: usize = field(f, "Ipv4PrefixCount").and_then(|c| c.parse().ok()).unwrap_or(0);
            let _one = book.picking.lock().await;
            let Some(got) = pick(upstream, book, &eni, count).await? else { return Ok(insufficient(&eni)) };
            book.held().entry(eni.clone()).or_default().extend(&got);
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AssignPrivateIpAddressesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                 <requestId>vpc-sim-prefix</requestId><networkInterfaceId>{eni}</networkInterfaceId><assignedPrivateIpAddressesSet/>{}\
                 </AssignPrivateIpAddressesResponse>",
                prefix_set("assignedIpv4PrefixSet", &got)
            );
            Ok(xml_response(StatusCode::OK, body))
        }
        "UnassignPrivateIpAddresses" if is_prefix_request(f) => {
            let eni = field(f, "NetworkInterfaceId").unwrap_or_default();
            let gone: Vec<Ipv4Net> =
                f.iter().filter(|(k, _)| k.starts_with("Ipv4Prefix.")).filter_map(|(_, v)| v.parse().ok()).collect();
            let mut b = book.held();
            let held = b.entry(eni.to_string()).or_default();
            if let Some(p) = gone.iter().find(|p| !held.contains(p)) {
                return Ok(error_response(&Fault {
                    status: 400,
                    code: "InvalidParameterValue".into(),
                    message: format!("Some of the specified prefixes are not assigned to interface {eni}: {p}"),
                }));
            }
            held.retain(|p| !gone.contains(p));
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<UnassignPrivateIpAddressesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                        <requestId>vpc-sim-prefix</requestId><return>true</return></UnassignPrivateIpAddressesResponse>";
            Ok(xml_response(StatusCode::OK, body.to_string()))
        }
        "CreateNetworkInterface" if is_prefix_request(f) => {
            let count: usize = field(f, "Ipv4PrefixCount").and_then(|c| c.parse().ok()).unwrap_or(0);
            let rest: Vec<&(String, String)> = f.iter().filter(|(k, _)| k != "Ipv4PrefixCount").collect();
            let body: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(rest.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .finish();
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            let resp = forward(upstream, parts, Bytes::from(body)).await?;
            let (rparts, rbody) = resp.into_parts();
            let bytes = http_body_util::BodyExt::collect(rbody).await.map_err(|e| e.to_string())?.to_bytes();
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            let Some(eni) = values(&text, "networkInterfaceId").first().map(|s| s.to_string()) else {
                return Ok(Response::from_parts(rparts, Full::new(bytes)));
            };
            let _one = book.picking.lock().await;
            let Some(got) = pick(upstream, book, &eni, count).await? else {
                // EC2 creates nothing when it cannot delegate: neither does this.
                ask(
                    upstream,
                    &[("Action", "DeleteNetworkInterface"), ("Version", "2016-11-15"), ("NetworkInterfaceId", &eni)],
                )
                .await?;
                return Ok(insufficient(&eni));
            };
            book.held().insert(eni.clone(), got);
            text = inject(&text, &book.held());
            Ok(xml_response(rparts.status, text))
        }
        "DescribeNetworkInterfaces" => {
            let resp = forward(upstream, parts, body).await?;
            let (rparts, rbody) = resp.into_parts();
            let bytes = http_body_util::BodyExt::collect(rbody).await.map_err(|e| e.to_string())?.to_bytes();
            let text = inject(&String::from_utf8_lossy(&bytes), &book.held());
            let ipv4_less = book.ipv4_less.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Ok(xml_response(rparts.status, strip_ipv4(&text, &ipv4_less)))
        }
        "DeleteNetworkInterface" => {
            let resp = forward(upstream, parts, body).await?;
            if resp.status().is_success()
                && let Some(eni) = field(f, "NetworkInterfaceId")
            {
                book.held().remove(eni);
            }
            Ok(resp)
        }
        _ => forward(upstream, parts, body).await,
    }
}

/// Cuts the private IPv4 addresses (the primary and the `privateIpAddressesSet`) of each ENI of `enis` from a
/// DescribeNetworkInterfaces answer. An ENI's part of the answer runs from its id to the next ENI's id; EC2's
/// (and LocalStack's) element order puts the addresses after the id.
fn strip_ipv4(xml: &str, enis: &BTreeSet<String>) -> String {
    let cut = |s: &str, tag: &str| -> String {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        match (s.find(&open), s.find(&close)) {
            (Some(a), Some(b)) if b > a => format!("{}{}", &s[..a], &s[b + close.len()..]),
            _ => s.to_string(),
        }
    };
    let mut out = xml.to_string();
    for eni in enis {
        let anchor = format!("<networkInterfaceId>{eni}</networkInterfaceId>");
        let Some(at) = out.find(&anchor) else { continue };
        let from = at + anchor.len();
        let end = out[from..].find("<networkInterfaceId>").map_or(out.len(), |i| from + i);
        let part = cut(&cut(&out[from..end], "privateIpAddressesSet"), "privateIpAddress");
        out.replace_range(from..end, &part);
    }
    out
}

/// Adds `<ipv4PrefixSet>` after each `<networkInterfaceId>` of an ENI that holds prefixes.
fn inject(xml: &str, book: &BTreeMap<String, Vec<Ipv4Net>>) -> String {
    let mut out = xml.to_string();
    for (eni, prefixes) in book.iter().filter(|(_, p)| !p.is_empty()) {
        let anchor = format!("<networkInterfaceId>{eni}</networkInterfaceId>");
        if let Some(i) = out.find(&anchor) {
            out.insert_str(i + anchor.len(), &prefix_set("ipv4PrefixSet", prefixes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_added_to_the_enis_that_hold_them() {
        let xml = "<item><networkInterfaceId>eni-a</networkInterfaceId><x/></item><item><networkInterfaceId>eni-b</networkInterfaceId></item>";
        let book = BTreeMap::from([("eni-b".to_string(), vec!["10.0.0.16/28".parse().unwrap()])]);
        assert_eq!(
            inject(xml, &book),
            "<item><networkInterfaceId>eni-a</networkInterfaceId><x/></item><item><networkInterfaceId>eni-b</networkInterfaceId>\
             <ipv4PrefixSet><item><ipv4Prefix>10.0.0.16/28</ipv4Prefix></item></ipv4PrefixSet></item>"
        );
        assert!(is_prefix_request(&form(b"Action=AssignPrivateIpAddresses&Ipv4PrefixCount=2")));
        assert!(is_prefix_request(&form(b"Action=UnassignPrivateIpAddresses&Ipv4Prefix.1=10.0.0.16%2F28")));
        assert!(!is_prefix_request(&form(b"Action=AssignPrivateIpAddresses&SecondaryPrivateIpAddressCount=2")));
    }

    #[test]
    fn an_eni_shown_without_ipv4_loses_only_its_own_addresses() {
        let eni = |id: &str, ip: &str| {
            format!(
                "<item><attachment><deviceIndex>1</deviceIndex></attachment><networkInterfaceId>{id}</networkInterfaceId>\
                 <privateIpAddress>{ip}</privateIpAddress><privateIpAddressesSet><item><primary>true</primary>\
                 <privateIpAddress>{ip}</privateIpAddress></item></privateIpAddressesSet></item>"
            )
        };
        let xml = format!("{}{}{}", eni("eni-a", "10.0.0.5"), eni("eni-b", "10.0.0.6"), eni("eni-c", "10.0.0.7"));
        let out = strip_ipv4(&xml, &BTreeSet::from(["eni-b".to_string()]));
        assert!(out.contains("10.0.0.5") && out.contains("10.0.0.7"), "{out}");
        assert!(
            !out.contains("10.0.0.6") && out.contains("<networkInterfaceId>eni-b</networkInterfaceId></item>"),
            "{out}"
        );
    }
}
