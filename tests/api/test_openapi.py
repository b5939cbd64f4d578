"""/openapi.json is generated from the validating models; the error shape it documents is the one sent."""

from __future__ import annotations

import schemathesis

from margin.api.errors import error_body
from margin.api.openapi import ErrorBody, document
from margin.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from margin.protocol import ChatCompletionRequest
from tests.helpers import Gateway


def test_document_schemas_are_the_models_schemas() -> None:
    doc = document()
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    expected = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    assert chat["properties"] == expected["properties"]
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    schemathesis.openapi.from_dict(doc).validate()  # a valid OpenAPI 3.1 document (raises otherwise)


def test_the_documented_error_shape_is_what_errors_send() -> None:
    for error in (InvalidRequest("x", param="p"), PayloadTooLarge("y"), UnsupportedMediaType("z")):
        ErrorBody.model_validate(error_body(error))


async def test_served_without_a_key(gw: Gateway) -> None:
    response = await gw.http.get("/openapi.json")
    assert response.status_code == 200 and response.json()["openapi"] == "3.1.0"
