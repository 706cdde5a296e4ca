// The roles a Flux tenant's schema and policies expect on any server it is restored into: the platform
// roles, the authenticator that switches into them, and the tenant's own role.

export interface StubRole {
  name: string;
  /** CREATE ROLE options when the migrate has to create it. */
  options: string;
  /** BYPASSRLS roles can only be created by a superuser. */
  needsSuperuser: boolean;
}

export const PLATFORM_ROLES = ['anon', 'authenticated', 'service_role', 'authenticator'] as const;
export const AUTHENTICATOR = 'authenticator';

/** The roles the restored schema and its policies expect in the dedicated database. */
export function stubRoles(tenantRole: string, policyRoles: readonly string[]): StubRole[] {
  const roles: StubRole[] = [
    { name: 'anon', options: 'NOLOGIN', needsSuperuser: false },
    { name: 'authenticated', options: 'NOLOGIN', needsSuperuser: false },
    { name: 'service_role', options: 'NOLOGIN BYPASSRLS', needsSuperuser: true },
    // No password: the operator sets one when the gateway is switched over.
    { name: AUTHENTICATOR, options: 'NOINHERIT LOGIN', needsSuperuser: false },
    { name: tenantRole, options: 'NOLOGIN', needsSuperuser: false },
  ];
  for (const role of policyRoles) {
    if (role === 'public' || role.startsWith('pg_') || roles.some((r) => r.name === role)) continue;
    roles.push({ name: role, options: 'NOLOGIN', needsSuperuser: false });
  }
  return roles;
}

/** Roles `authenticator` switches into: the platform roles and the tenant's own. */
export function authenticatorMemberships(tenantRole: string): string[] {
  return ['anon', 'authenticated', 'service_role', tenantRole];
}
