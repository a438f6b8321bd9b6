"""ViNe (thesis §3.3.1, ch. 5 §5.4): one ViNe router (VR) per site gives the hosts of every
site one network, across firewalls and NATs.

A VR serves the hosts of its LNDT (local network description table) and knows, from its
GNDT (global network description table: network -> VR, the most specific entry wins), which
VR serves a destination. Each VR announces its own entries (its record: its networks, its
public address) to the others, signed with the overlay's shared secret; a changed record
reaches every VR at run time (g5kdeploy.vine.router). Traffic between sites goes in VXLAN
between the VRs' public addresses, with static forwarding entries and routes (a kernel data
plane driven by the user-level control plane, g5kdeploy.vine.dataplane); traffic within a
site never reaches its VR.
"""
