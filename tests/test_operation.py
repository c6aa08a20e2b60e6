"""Operation parsing in process (cra/operation.py): what the agent accepts from the cloud before it
opens anything, and the words it fails the rest with."""
import pytest

from cra.operation import ConnectRequest, InvalidOperation, parse

KEY = "eb5e9d13-1caa-486b-bdda-130ca0d87df8"


def operation(**fragment):
    return {"id": "4711", "c8y_RemoteAccessConnect": {"hostname": "10.0.0.67", "port": 5900, "connectionKey": KEY,
                                                      **fragment}}


@pytest.mark.parametrize("hostname", ["10.0.0.67", "fe80::1", "fe80::1%eth0", "gw-001.local", "plc_7", "localhost",
                                      "host.", "Bücher.example", "a" * 63 + ".example"])
def test_a_host_name_or_an_address_is_taken(hostname):
    assert parse(operation(hostname=hostname)) == ConnectRequest("4711", hostname, 5900, KEY)


@pytest.mark.parametrize("hostname", ["", " ", "a b", "a/b", "127.0.0.1\x00evil.example", "gw\n001", "gw\x7f", "-gw",
                                      "gw-", "a..b", ".", "a" * 64 + ".example", "x." * 127 + "x", "127.0.0.1:22",
                                      "[::1]", "http://gw", "gw;rm", "*", 7, None, ["gw"], {"host": "gw"}])
def test_anything_else_is_an_invalid_operation(hostname):
    with pytest.raises(InvalidOperation, match=r"^invalid operation: hostname must be a host name or address, not "):
        parse(operation(hostname=hostname))


@pytest.mark.parametrize("port, taken", [(1, 1), (65535, 65535), ("22", 22)])
def test_a_port_is_a_number_or_its_digits(port, taken):
    assert parse(operation(port=port)).port == taken


@pytest.mark.parametrize("port", [0, 65536, -1, 22.0, "22a", "", " 22", "000022", "9" * 4301, True, None, [22]])
def test_any_other_port_is_an_invalid_operation(port):
    with pytest.raises(InvalidOperation, match=r"^invalid operation: port must be a number from 1 to 65535, not "):
        parse(operation(port=port))


@pytest.mark.parametrize("key", ["../../inventory", "abc", "a b c d e f g h", "x?y=1234567", "%2Fabcdefgh", "é" * 10,
                                 "a" * 129, 12345678, None])
def test_a_connection_key_that_could_leave_its_path_is_invalid_and_never_shown_whole(key):
    with pytest.raises(InvalidOperation, match=r"^invalid operation: connectionKey must be a UUID-like token") as refused:
        parse(operation(connectionKey=key))
    if isinstance(key, str) and len(key) > 4:
        assert key not in str(refused.value)


@pytest.mark.parametrize("body", [{"id": "1"}, {"id": "1", "c8y_RemoteAccessConnect": "10.0.0.67:22"},
                                  {"id": "1", "c8y_RemoteAccessConnect": None}])
def test_an_operation_without_the_fragment_is_invalid(body):
    with pytest.raises(InvalidOperation, match=r"c8y_RemoteAccessConnect is missing or not an object"):
        parse(body)
