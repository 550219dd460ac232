// JSONValue, NameRules and CodedError are part of the domain's vocabulary for every client.
@_exported import LocoShared
