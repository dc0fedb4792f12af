//! What can go wrong talking to the directory, and whether trying again can help.

/// An error of a directory call.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No answer (connection refused, timeout, broken off): try again later.
    #[error("directory unreachable: {0}")]
    Unreachable(String),
    /// The directory answered with an error status; its `message` and attribute errors.
    #[error("directory answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The directory answered something we cannot read.
    #[error("directory answer unreadable: {0}")]
    BadAnswer(String),
}

impl DirectoryError {
    /// Worth trying again later (the directory was down or overloaded), as opposed to a
    /// refusal that will not change by itself.
    pub fn retryable(&self) -> bool {
        match self {
            DirectoryError::Unreachable(_) => true,
            DirectoryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408 || *status == 401
            }
            DirectoryError::BadAnswer(_) => true,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            DirectoryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Without the URL: query strings may carry tokens (OpenID user info).
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let e = e.without_url();
        if e.is_decode() {
            DirectoryError::BadAnswer(e.to_string())
        } else {
            DirectoryError::Unreachable(e.to_string())
        }
    }

    /// Reads the gematik `Error` body (`message`, `errors[{attributeName, attributeError}]`)
    /// of a failed answer.
    pub(crate) async fn from_response(response: reqwest::Response) -> Self {
        #[derive(serde::Deserialize)]
        struct Inner {
            #[serde(rename = "attributeName")]
            name: Option<String>,
            #[serde(rename = "attributeError")]
            error: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Body {
            message: Option<String>,
            #[serde(default)]
            errors: Vec<Inner>,
            // FHIR servers answer with an OperationOutcome instead.
            #[serde(default)]
            issue: Vec<serde_json::Value>,
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<Body>(&text) {
            Ok(body) => {
                let mut parts: Vec<String> = body.message.into_iter().collect();
                parts.extend(body.errors.into_iter().map(|e| {
                    format!(
                        "{}: {}",
                        e.name.unwrap_or_default(),
                        e.error.unwrap_or_default()
                    )
                }));
                parts.extend(body.issue.iter().filter_map(|i| {
                    i.get("diagnostics")
                        .and_then(|d| d.as_str())
                        .map(str::to_owned)
                }));
                parts.join("; ")
            }
            Err(_) => text.chars().take(200).collect(),
        };
        DirectoryError::Status { status, message }
    }
}
