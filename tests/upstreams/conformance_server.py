"""An MCP server that implements every server scenario of the official conformance suite.

    python tests/upstreams/conformance_server.py [--transport stdio|streamable-http|sse]
        [--host 127.0.0.1] [--port 0] [--name NAME] [--no-event-store]

`@modelcontextprotocol/conformance` (server mode) calls fixed names, which this server offers
exactly as the scenarios describe them:

- tools `test_simple_text`, `test_image_content`, `test_audio_content`, `test_embedded_resource`,
  `test_multiple_content_types`, `test_tool_with_logging` (three info log messages, 50 ms apart),
  `test_error_handling` (an isError result), `test_tool_with_progress` (progress 0, 50, 100 of
  100), `test_sampling(prompt)` (sampling/createMessage), `test_elicitation(message)`,
  `test_elicitation_sep1034_defaults` (a form whose fields all carry defaults),
  `test_elicitation_sep1330_enums` (the five enum shapes), `json_schema_2020_12_tool` (an input
  schema with `$schema`, `$defs` and `additionalProperties`) and `test_reconnection` (closes its
  SSE stream before answering, so the client must resume with Last-Event-ID; HTTP only);
- resources `test://static-text`, `test://static-binary`, `test://watched-resource`
  (subscribe/unsubscribe) and the template `test://template/{id}/data`;
- prompts `test_simple_prompt`, `test_prompt_with_arguments(arg1, arg2)`,
  `test_prompt_with_embedded_resource(resourceUri)` and `test_prompt_with_image`;
- `completion/complete` for the prompt's `arg1`/`arg2` and the template's `id`;
- `logging/setLevel`, which filters the log messages sent afterwards.

It is written with the SDK's low-level `Server` so that every field on the wire is exactly the
one the scenario describes (no schema generated from a signature). Over HTTP it binds its socket
itself and, once it accepts requests, prints one line `LISTENING http://<host>:<port>` to stdout
(with `--port 0` that is how the port is found). Streamable HTTP is served at `/mcp`, with an
in-memory event store so that streams can be resumed; legacy SSE at `/sse` (messages at
`/messages/`); both with DNS-rebinding protection (Host/Origin must be loopback). Logs go to
stderr. Self-contained: it needs only the `mcp` SDK.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import struct
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from fixture_server import serve_http  # same folder: one copy of the ready-line HTTP runner
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send

READY_PREFIX = "LISTENING "

# A 1x1 red PNG and a 1-sample 8 kHz mono 8-bit WAV: the smallest valid files of each kind.
RED_PIXEL_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
TINY_WAV = base64.b64encode(
    # RIFF header, fmt chunk (PCM, mono, 8000 Hz, 8000 B/s, align 1, 8 bits), data chunk of 1 byte
    struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 37, b"WAVE", b"fmt ", 16, 1, 1, 8000, 8000, 1, 8, b"data", 1)
    + b"\x80"
).decode("ascii")

LOG_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)

JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}

TOOLS: list[types.Tool] = [
    types.Tool(name="test_simple_text", description="Returns simple text content.", input_schema=NO_ARGS),
    types.Tool(name="test_image_content", description="Returns image content (a PNG).", input_schema=NO_ARGS),
    types.Tool(name="test_audio_content", description="Returns audio content (a WAV).", input_schema=NO_ARGS),
    types.Tool(
        name="test_embedded_resource", description="Returns an embedded text resource.", input_schema=NO_ARGS
    ),
    types.Tool(
        name="test_multiple_content_types",
        description="Returns text, image and embedded resource content together.",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_tool_with_logging",
        description="Sends three info log messages while it runs.",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_error_handling", description="Always returns an error result.", input_schema=NO_ARGS
    ),
    types.Tool(
        name="test_tool_with_progress",
        description="Reports progress 0, 50 and 100 of 100 when given a progress token.",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_sampling",
        description="Asks the client's LLM (sampling/createMessage) and returns its answer.",
        input_schema={
            "type": "object",
            "properties": {"prompt": {"type": "string", "description": "The prompt to send to the LLM"}},
            "required": ["prompt"],
        },
    ),
    types.Tool(
        name="test_elicitation",
        description="Asks the user for a username and an email (elicitation/create).",
        input_schema={
            "type": "object",
            "properties": {"message": {"type": "string", "description": "The message to show the user"}},
            "required": ["message"],
        },
    ),
    types.Tool(
        name="test_elicitation_sep1034_defaults",
        description="Elicits a form whose fields all carry default values (SEP-1034).",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="test_elicitation_sep1330_enums",
        description="Elicits a form with the five enum schema variants (SEP-1330).",
        input_schema=NO_ARGS,
    ),
    types.Tool(
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        input_schema={
            "$schema": JSON_SCHEMA_2020_12,
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                }
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="test_reconnection",
        description="Closes its SSE stream before answering; the client resumes it with Last-Event-ID.",
        input_schema=NO_ARGS,
    ),
]

ELICITATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}

SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}

SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Untitled single-select",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Titled single-select",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Legacy titled enum (enumNames, deprecated)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Untitled multi-select",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Titled multi-select",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}

STATIC_TEXT_URI = "test://static-text"
STATIC_BINARY_URI = "test://static-binary"
WATCHED_URI = "test://watched-resource"
TEMPLATE_URI = "test://template/{id}/data"

RESOURCES: list[types.Resource] = [
    types.Resource(
        uri=STATIC_TEXT_URI, name="static-text", description="A static text resource.", mime_type="text/plain"
    ),
    types.Resource(
        uri=STATIC_BINARY_URI,
        name="static-binary",
        description="A static binary resource (a PNG).",
        mime_type="image/png",
    ),
    types.Resource(
        uri=WATCHED_URI,
        name="watched-resource",
        description="A resource that can be subscribed to.",
        mime_type="text/plain",
    ),
]

TEMPLATES: list[types.ResourceTemplate] = [
    types.ResourceTemplate(
        uri_template=TEMPLATE_URI,
        name="template-data",
        description="JSON data for the given id.",
        mime_type="application/json",
    )
]

PROMPTS: list[types.Prompt] = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt without arguments."),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two required arguments.",
        arguments=[
            types.PromptArgument(name="arg1", description="First test argument", required=True),
            types.PromptArgument(name="arg2", description="Second test argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource.",
        arguments=[
            types.PromptArgument(
                name="resourceUri", description="URI of the resource to embed", required=True
            )
        ],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with image content."),
]

COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party", "test-alpha", "test-beta"],
    "arg2": ["world", "wonder", "test-gamma"],
    "id": ["1", "12", "123", "42"],
}


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def image() -> types.ImageContent:
    return types.ImageContent(type="image", data=RED_PIXEL_PNG, mime_type="image/png")


@dataclass
class State:
    """What the server remembers across requests. Process-wide, shared by every session: the
    level set by `logging/setLevel` applies to all of them (enough for one conformance run)."""

    log_level: types.LoggingLevel = "debug"
    subscriptions: set[str] = field(default_factory=set)

    def logs_at(self, level: types.LoggingLevel) -> bool:
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)


Ctx = ServerRequestContext[Any, Any]


def build_server(name: str = "conformance-fixture") -> Server[Any]:
    state = State()

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        handler = TOOL_HANDLERS.get(params.name)
        if handler is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        return await handler(ctx, params.arguments or {})

    async def log(ctx: Ctx, level: types.LoggingLevel, message: str) -> None:
        if state.logs_at(level):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # logging is deprecated in 2026-07-28, not here
                await ctx.session.send_log_message(
                    level=level, data=message, logger=name, related_request_id=ctx.request_id
                )

    async def simple_text(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(content=[text("This is a simple text response for testing.")])

    async def image_content(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(content=[image()])

    async def audio_content(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(
            content=[types.AudioContent(type="audio", data=TINY_WAV, mime_type="audio/wav")]
        )

    async def embedded_resource(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        resource = types.TextResourceContents(
            uri="test://embedded-resource",
            mime_type="text/plain",
            text="This is an embedded resource content.",
        )
        return types.CallToolResult(content=[types.EmbeddedResource(type="resource", resource=resource)])

    async def multiple_content_types(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        resource = types.TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        return types.CallToolResult(
            content=[
                text("Multiple content types test:"),
                image(),
                types.EmbeddedResource(type="resource", resource=resource),
            ]
        )

    async def tool_with_logging(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        await log(ctx, "info", "Tool execution started")
        await anyio.sleep(0.05)
        await log(ctx, "info", "Tool processing data")
        await anyio.sleep(0.05)
        await log(ctx, "info", "Tool execution completed")
        return types.CallToolResult(content=[text("Tool with logging executed successfully")])

    async def error_handling(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(
            content=[text("This tool intentionally returns an error for testing")], is_error=True
        )

    async def tool_with_progress(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        for step, progress in enumerate((0, 50, 100)):
            if step:
                await anyio.sleep(0.05)
            await ctx.session.report_progress(progress, 100)  # a no-op without a progress token
        return types.CallToolResult(content=[text("Tool with progress executed successfully")])

    async def sampling(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        prompt = str(args.get("prompt", ""))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sampling is deprecated in 2026-07-28, not here
            result = await ctx.session.create_message(
                messages=[types.SamplingMessage(role="user", content=text(prompt))],
                max_tokens=100,
                related_request_id=ctx.request_id,
            )
        content = result.content
        answer = (
            content.text
            if isinstance(content, types.TextContent)
            else json.dumps(content.model_dump(mode="json", by_alias=True, exclude_none=True))
        )
        return types.CallToolResult(content=[text(f"LLM response: {answer}")])

    async def elicit(ctx: Ctx, message: str, schema: dict[str, Any]) -> types.ElicitResult:
        return await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)

    async def elicitation(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        result = await elicit(ctx, str(args.get("message", "")), ELICITATION_SCHEMA)
        return types.CallToolResult(
            content=[text(f"User response: action={result.action}, content={json.dumps(result.content)}")]
        )

    async def elicitation_defaults(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        result = await elicit(ctx, "Please review and update the form fields with defaults", SEP1034_SCHEMA)
        return types.CallToolResult(
            content=[
                text(f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}")
            ]
        )

    async def elicitation_enums(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        result = await elicit(ctx, "Please select options from the enum fields", SEP1330_SCHEMA)
        return types.CallToolResult(
            content=[
                text(f"Elicitation completed: action={result.action}, content={json.dumps(result.content)}")
            ]
        )

    async def json_schema_tool(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(content=[text(f"Received: {json.dumps(args, sort_keys=True)}")])

    async def reconnection(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
        if ctx.close_sse_stream is not None:  # streamable HTTP with an event store, 2025-11-25+
            await anyio.sleep(0.05)  # let the priming event reach the client first
            await ctx.close_sse_stream()
            await anyio.sleep(0.1)  # the answer is stored, then replayed on the resumed stream
        return types.CallToolResult(content=[text("Reconnection test completed successfully")])

    TOOL_HANDLERS: dict[str, Callable[[Ctx, dict[str, Any]], Any]] = {
        "test_simple_text": simple_text,
        "test_image_content": image_content,
        "test_audio_content": audio_content,
        "test_embedded_resource": embedded_resource,
        "test_multiple_content_types": multiple_content_types,
        "test_tool_with_logging": tool_with_logging,
        "test_error_handling": error_handling,
        "test_tool_with_progress": tool_with_progress,
        "test_sampling": sampling,
        "test_elicitation": elicitation,
        "test_elicitation_sep1034_defaults": elicitation_defaults,
        "test_elicitation_sep1330_enums": elicitation_enums,
        "json_schema_2020_12_tool": json_schema_tool,
        "test_reconnection": reconnection,
    }
    assert set(TOOL_HANDLERS) == {tool.name for tool in TOOLS}

    async def list_resources(
        ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=RESOURCES)

    async def list_resource_templates(
        ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)

    async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        contents: types.TextResourceContents | types.BlobResourceContents
        if uri == STATIC_TEXT_URI:
            contents = types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
            )
        elif uri == STATIC_BINARY_URI:
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=RED_PIXEL_PNG)
        elif uri == WATCHED_URI:
            contents = types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="Watched resource content."
            )
        elif uri.startswith("test://template/") and uri.endswith("/data") and uri.count("/") == 4:
            item = uri[len("test://template/") : -len("/data")]
            body = {"id": item, "templateTest": True, "data": f"Data for ID: {item}"}
            contents = types.TextResourceContents(
                uri=uri, mime_type="application/json", text=json.dumps(body)
            )
        else:
            raise MCPError(types.INVALID_PARAMS, f"Resource not found: {uri}")
        return types.ReadResourceResult(contents=[contents])

    async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        state.subscriptions.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        state.subscriptions.discard(str(params.uri))
        return types.EmptyResult()

    async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=PROMPTS)

    async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        args = params.arguments or {}
        if params.name == "test_simple_prompt":
            messages = [
                types.PromptMessage(role="user", content=text("This is a simple prompt for testing."))
            ]
        elif params.name == "test_prompt_with_arguments":
            arg1, arg2 = args.get("arg1", ""), args.get("arg2", "")
            messages = [
                types.PromptMessage(
                    role="user", content=text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")
                )
            ]
        elif params.name == "test_prompt_with_embedded_resource":
            resource = types.TextResourceContents(
                uri=args.get("resourceUri", "test://example-resource"),
                mime_type="text/plain",
                text="Embedded resource content for testing.",
            )
            messages = [
                types.PromptMessage(
                    role="user", content=types.EmbeddedResource(type="resource", resource=resource)
                ),
                types.PromptMessage(role="user", content=text("Please process the embedded resource above.")),
            ]
        elif params.name == "test_prompt_with_image":
            messages = [
                types.PromptMessage(role="user", content=image()),
                types.PromptMessage(role="user", content=text("Please analyze the image above.")),
            ]
        else:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        return types.GetPromptResult(messages=messages)

    async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        ref = params.ref
        known = (isinstance(ref, types.PromptReference) and ref.name == "test_prompt_with_arguments") or (
            isinstance(ref, types.ResourceTemplateReference) and ref.uri == TEMPLATE_URI
        )
        candidates = COMPLETIONS.get(params.argument.name, []) if known else []
        values = [value for value in candidates if value.startswith(params.argument.value)]
        return types.CompleteResult(
            completion=types.Completion(values=values, total=len(values), has_more=False)
        )

    async def set_logging_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        state.log_level = params.level
        return types.EmptyResult()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on_set_logging_level: deprecated in 2026-07-28 only
        return Server(
            name,
            version="1.0.0",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_resources=list_resources,
            on_list_resource_templates=list_resource_templates,
            on_read_resource=read_resource,
            on_subscribe_resource=subscribe,
            on_unsubscribe_resource=unsubscribe,
            on_list_prompts=list_prompts,
            on_get_prompt=get_prompt,
            on_completion=complete,
            on_set_logging_level=set_logging_level,
        )


class InMemoryEventStore(EventStore):
    """Keeps every event of every stream, so a client that reconnects with Last-Event-ID can resume."""

    def __init__(self) -> None:
        self._events: list[tuple[StreamId, EventId, types.JSONRPCMessage | None]] = []
        self._counter = 0

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        self._counter += 1
        event_id = str(self._counter)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        index = next((i for i, event in enumerate(self._events) if event[1] == last_event_id), None)
        if index is None:
            return None
        stream_id = self._events[index][0]
        for event_stream, event_id, message in self._events[index + 1 :]:
            if event_stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def loopback_only() -> TransportSecuritySettings:
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


def http_app(server: Server[Any], host: str, *, event_store: bool) -> ASGIApp:
    return server.streamable_http_app(
        streamable_http_path="/mcp",
        host=host,
        transport_security=loopback_only(),
        event_store=InMemoryEventStore() if event_store else None,
        retry_interval=500 if event_store else None,
    )


def sse_app(server: Server[Any]) -> ASGIApp:
    from mcp.server.sse import SseServerTransport
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    sse = SseServerTransport("/messages/", security_settings=loopback_only())

    class SseEndpoint:  # a plain ASGI app: the response is the SSE stream connect_sse sends
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async with sse.connect_sse(scope, receive, send) as (read, write):
                await server.run(read, write, server.create_initialization_options())

    return Starlette(
        routes=[
            Route("/sse", endpoint=SseEndpoint(), methods=["GET"]),
            Mount("/messages/", app=sse.handle_post_message),
        ]
    )


async def serve_stdio(server: Server[Any]) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MCP server implementing the conformance suite's scenarios.")
    parser.add_argument("--transport", choices=["stdio", "streamable-http", "sse"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="conformance-fixture")
    parser.add_argument(
        "--no-event-store", action="store_true", help="HTTP: no event store (streams cannot be resumed)"
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format=f"[{args.name}] %(levelname)s %(message)s"
    )
    warnings.simplefilter("ignore")  # the SDK's 2026-07-28 deprecation warnings are noise here
    server = build_server(args.name)
    if args.transport == "stdio":
        anyio.run(serve_stdio, server)
    elif args.transport == "sse":
        serve_http(sse_app(server), args.host, args.port)
    else:
        serve_http(http_app(server, args.host, event_store=not args.no_event_store), args.host, args.port)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
