//! `JsonBody<T>`: a JSON request body parsed with serde, so errors name the offending field.

use poem::{Request, RequestBody};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{ParsePayload, Payload},
    registry::{MetaSchemaRef, Registry},
    types::Type,
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body; unknown fields are rejected where the type says so.
pub struct JsonBody<T>(pub T);

impl<T: Type + Send> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        content_type
            .split(';')
            .next()
            .map(str::trim)
            .is_some_and(|ct| {
                ct.eq_ignore_ascii_case("application/json")
                    || (ct.starts_with("application/") && ct.ends_with("+json"))
            })
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned + Send> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = <Vec<u8> as poem::FromRequest>::from_request(request, body).await?;
        parse(&bytes).map(JsonBody).map_err(Into::into)
    }
}

impl_apirequest_for_payload!(JsonBody<T>, T: Type + DeserializeOwned + Send);

/// A JSON body kept as its exact bytes (to check a signature over them before parsing).
pub struct RawJsonBody(pub Vec<u8>);

impl Payload for RawJsonBody {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        JsonBody::<serde_json::Value>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        <serde_json::Value as Type>::schema_ref()
    }
}

impl ParsePayload for RawJsonBody {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = <Vec<u8> as poem::FromRequest>::from_request(request, body).await?;
        Ok(RawJsonBody(bytes))
    }
}

impl_apirequest_for_payload!(RawJsonBody);

/// Parses JSON, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            poem::http::StatusCode::BAD_REQUEST,
            "invalid_body",
            "A JSON request body is required.",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                poem::http::StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("The body is not valid JSON: {message}."),
            );
        }
        // `missing field `x`` is reported at the parent; name the field itself.
        let field = match message.strip_prefix("missing field `") {
            Some(rest) => {
                let name = rest.trim_end_matches('`');
                if path == "." {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                }
            }
            // serde_path_to_error already puts an unknown field at the end of the path.
            None if path == "." => match message.strip_prefix("unknown field `") {
                Some(rest) => rest.split('`').next().unwrap_or(rest).to_owned(),
                None => path,
            },
            None => path,
        };
        ApiError::validation(field, message)
    })?;
    // One JSON value and nothing after it but whitespace.
    de.end().map_err(|_| {
        ApiError::new(
            poem::http::StatusCode::BAD_REQUEST,
            "invalid_json",
            "The body is not valid JSON: trailing characters after the value.",
        )
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct In {
        email: String,
        age: u32,
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse::<In>(br#"{"email": 5, "age": 1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("email"));
    }

    #[test]
    fn missing_fields_are_named() {
        let e = parse::<In>(br#"{"email": "a"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("age"));
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse::<In>(br#"{"email": "a", "age": 1, "admin": true}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("admin"));
    }

    #[test]
    fn text_after_the_value_is_invalid_json() {
        let e = parse::<In>(br#"{"email": "a", "age": 1} xyz"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse::<In>(br#"{"email": "a", "age": 1}{}"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert!(parse::<In>(b"{\"email\": \"a\", \"age\": 1} \n").is_ok());
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        let e = parse::<In>(b"{not json").unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }
}
