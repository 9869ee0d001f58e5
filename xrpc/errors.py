"""XRPC errors: a JSON body ``{"error": Name, "message": text}`` with the protocol's status."""


class XrpcError(Exception):
    def __init__(self, name: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.name, "message": self.message}


def invalid_request(message: str) -> XrpcError:
    return XrpcError("InvalidRequest", message)


def not_found(message: str) -> XrpcError:
    return XrpcError("NotFound", message)
