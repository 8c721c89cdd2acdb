//! Limits files → a validated [`Config`].
//!
//! Owns: finding the files under each `--config` path, parsing YAML with positions, the
//! endpoint format's fields and defaults, merging files, and reporting every problem with
//! file:line:column and field path. Must not depend on tonic, prost, redis, notify, HTTP
//! crates or `std::env`: it is pure apart from reading the files it is pointed at.

mod diag;
mod endpoint;
mod envoy;
mod fields;
mod files;
mod model;
mod path;
mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

pub use diag::{Diagnostic, Diagnostics, Pos, Severity};
pub use model::{
    Algorithm, Config, Counting, DescriptorConfig, DescriptorDomain, Endpoint, EndpointDomain,
    FieldAt, Invoker, Metadata, Origin, OverallLimit, RateLimitConfig, Soft, Unit, UriPrefix,
};
pub use path::normalize_path;

/// What one file holds.
enum Parsed {
    Endpoints(EndpointDomain),
    Descriptors(DescriptorDomain),
}

use fields::Ctx;

/// One limits file's name and text.
#[derive(Debug, Clone)]
pub struct Source {
    /// The name used in diagnostics (the path as found).
    pub name: String,
    /// The file's contents.
    pub text: String,
}

/// A configuration that loaded, with what `validate` shows and `/config` reports.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The rules.
    pub config: Config,
    /// Warnings (the configuration is valid).
    pub warnings: Vec<Diagnostic>,
    /// The files it came from, in load order.
    pub files: Vec<String>,
    /// SHA-256 over every file's name and contents, hex.
    pub sha256: String,
}

/// A configuration that did not load: every error (and every warning) found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError {
    /// Errors and warnings, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<&Diagnostic> = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        write!(f, "invalid configuration ({} error(s))", errors.len())?;
        for d in errors {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

impl From<Diagnostics> for LoadError {
    fn from(d: Diagnostics) -> Self {
        LoadError {
            diagnostics: d.into_vec(),
        }
    }
}

/// Finds and loads every limits file under `paths` (files, or directories whose `*.yaml` /
/// `*.yml` files are read in name order, dot-files skipped: a Kubernetes ConfigMap mount keeps
/// its real files under `..data`, reached through the top-level symlinks). Only regular files
/// are read, each up to the size bound; an entry that cannot be read fails the load.
pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded, LoadError> {
    let mut diags = Diagnostics::default();
    let sources = files::read_all(paths, &mut diags);
    if diags.has_errors() {
        return Err(diags.into());
    }
    load_sources(&sources)
}

/// Loads already-read sources: parse, validate, merge. Pure; the tests' entry point.
pub fn load_sources(sources: &[Source]) -> Result<Loaded, LoadError> {
    let mut diags = Diagnostics::default();
    let mut domains: Vec<EndpointDomain> = Vec::new();
    let mut descriptor_domains: Vec<DescriptorDomain> = Vec::new();
    let mut hasher = Sha256::new();
    for src in sources {
        hasher.update((src.name.len() as u64).to_be_bytes());
        hasher.update(src.name.as_bytes());
        hasher.update((src.text.len() as u64).to_be_bytes());
        hasher.update(src.text.as_bytes());
        for parsed in parse_source(src, &mut diags) {
            match parsed {
                Parsed::Endpoints(d) => merge_domain(&mut domains, d),
                Parsed::Descriptors(d) => descriptor_domains.push(d),
            }
        }
    }
    check_unique_shortnames(&domains, &mut diags);
    check_descriptor_domains(&domains, &descriptor_domains, &mut diags);
    if diags.has_errors() {
        return Err(diags.into());
    }
    Ok(Loaded {
        config: Config {
            domains,
            descriptor_domains,
        },
        warnings: diags.into_vec(),
        files: sources.iter().map(|s| s.name.clone()).collect(),
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Reads every YAML document of a file (docs/envoy-compat.md §1: several documents
/// separated by `---` are several domains, and every one of them loads).
fn parse_source(src: &Source, diags: &mut Diagnostics) -> Vec<Parsed> {
    if src.text.trim().is_empty() {
        // An editor's truncate-then-write must not drop every limit for a moment.
        diags.error(&src.name, None, "", "file is empty");
        return Vec::new();
    }
    let docs = match yaml::parse_documents(&src.text) {
        Ok(docs) => docs,
        Err(e) => {
            diags.error(&src.name, e.pos, "", format!("invalid YAML: {}", e.message));
            return Vec::new();
        }
    };
    if docs.is_empty() {
        // Only comments: as good as empty, and as dangerous.
        diags.error(
            &src.name,
            Some(Pos { line: 1, column: 1 }),
            "",
            "file holds no YAML document (only comments)",
        );
        return Vec::new();
    }
    docs.iter()
        .filter_map(|root| parse_document(src, root, diags))
        .collect()
}

/// Tells the formats apart by a document's top-level keys and reads it.
fn parse_document(src: &Source, root: &yaml::Node, diags: &mut Diagnostics) -> Option<Parsed> {
    let mut cx = Ctx {
        file: &src.name,
        diags,
    };
    let Some(map) = root.as_map() else {
        cx.error(
            root.pos,
            "",
            format!(
                "expected a mapping at the top of the file, found {}",
                root.value.kind()
            ),
        );
        return None;
    };
    if let Some(block) = root.get(endpoint::ROOT_KEY) {
        return endpoint::parse_block(&mut cx, block).map(Parsed::Endpoints);
    }
    if root.get("descriptors").is_some() || root.get("domain").is_some() {
        return envoy::parse_file(&mut cx, root).map(Parsed::Descriptors);
    }
    let keys: Vec<&str> = map.iter().filter_map(|(k, _)| k.as_str()).collect();
    let near = keys
        .iter()
        .find(|k| diag::did_you_mean(k, &[endpoint::ROOT_KEY]).is_some())
        .map(|k| format!("; `{k}` looks like a misspelling"))
        .unwrap_or_default();
    cx.error(
        root.pos,
        "",
        format!("no `{}` block found{near}", endpoint::ROOT_KEY),
    );
    None
}

fn merge_domain(domains: &mut Vec<EndpointDomain>, d: EndpointDomain) {
    match domains.iter_mut().find(|x| x.domain == d.domain) {
        Some(existing) => {
            existing.endpoints.extend(d.endpoints);
            if existing.envoy_version.is_none() {
                existing.envoy_version = d.envoy_version;
            }
        }
        None => domains.push(d),
    }
}

/// A domain of the envoyproxy/ratelimit format comes from one file, and is not also a domain
/// of the endpoint format (each domain has one format).
fn check_descriptor_domains(
    endpoints: &[EndpointDomain],
    descriptors: &[DescriptorDomain],
    diags: &mut Diagnostics,
) {
    let mut seen: HashMap<&str, &Origin> = HashMap::new();
    for d in descriptors {
        let pos = Some(Pos {
            line: d.origin.line,
            column: 1,
        });
        if let Some(first) = seen.get(d.domain.as_str()) {
            diags.error(
                &d.origin.file,
                pos,
                "domain",
                format!(
                    "domain \"{}\" is already defined in {}",
                    d.domain, first.file
                ),
            );
        } else if endpoints.iter().any(|e| e.domain == d.domain) {
            diags.error(
                &d.origin.file,
                pos,
                "domain",
                format!("domain \"{}\" is also used by a `kcse_rate_limits` file; each domain has one format", d.domain),
            );
        } else {
            seen.insert(&d.domain, &d.origin);
        }
    }
}

fn check_unique_shortnames(domains: &[EndpointDomain], diags: &mut Diagnostics) {
    // Unique across all loaded files and domains: it is what Envoy sends and what `render`
    // names clusters after, so two endpoints sharing it would silently share limits. The
    // error points at the second `shortname:` itself, with its full field path, and names
    // where the first one is.
    let mut seen: HashMap<&str, &Endpoint> = HashMap::new();
    for ep in domains.iter().flat_map(|d| &d.endpoints) {
        let at = &ep.shortname_at;
        if let Some(first) = seen.get(ep.shortname.as_str()) {
            let was = &first.shortname_at;
            diags.error(
                &ep.origin.file,
                Some(at.pos),
                &at.path,
                format!(
                    "duplicate shortname \"{}\" (first defined at {}:{}:{}, {})",
                    ep.shortname, first.origin.file, was.pos.line, was.pos.column, was.path
                ),
            );
        } else {
            seen.insert(&ep.shortname, ep);
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
