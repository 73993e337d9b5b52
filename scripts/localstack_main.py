"""Starts LocalStack with EC2's private-IP rules restored.

LocalStack's EC2 (moto) draws private IPs at random from the subnet without checking what is already in use,
and may hand out the subnet's reserved addresses (network, VPC router, DNS, future use, broadcast). Real EC2
never does either, and ipamd relies on it. This launcher wraps the generator so every IPv4 address it returns
is unused within this LocalStack process and not reserved, then runs LocalStack as usual.

In a subnet of /20 or larger it draws from the lower half only: the tests' EC2 proxy (tests/src/ec2prefix.rs)
delegates /28 prefixes, which LocalStack knows nothing of, from the upper half, so the two never overlap.
"""
import ipaddress
import runpy

import moto.ec2.utils as utils
import moto.ec2.models.elastic_network_interfaces as enis
import moto.ec2.models.instances as instances
import moto.ec2.models.nat_gateways as nat_gateways
import moto.ec2.models.vpcs as vpcs

_draw = utils.random_private_ip
_used = set()


def unique_private_ip(cidr=None, ipv6=False):
    if ipv6 or not cidr:
        return _draw(cidr, ipv6)
    net = ipaddress.IPv4Network(cidr)
    reserved = {net.network_address + i for i in range(4)} | {net.broadcast_address}
    draw_from = str(next(net.subnets(prefixlen_diff=1))) if net.prefixlen <= 20 else cidr
    for _ in range(100000):
        ip = _draw(draw_from, ipv6)
        if ip not in _used and ipaddress.IPv4Address(ip) not in reserved:
            _used.add(ip)
            return ip
    raise RuntimeError(f"no free private IP left in {cidr}")


for module in (utils, enis, instances, nat_gateways, vpcs):
    module.random_private_ip = unique_private_ip

runpy.run_module("localstack.runtime.main", run_name="__main__")
