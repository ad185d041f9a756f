-- Attribute values of each profile as of its latest export (a value cleared later is not carried over). An attribute
-- exported with a null value is unset: raw keeps it (value_type 'null'), staging leaves it out.
with

attribute_values as (

    {{ relation_or_empty(source('apsis', 'profile_attributes'), {
        'profile_key': dbt.type_string(),
        'section_id': dbt.type_string(),
        'attribute_id': dbt.type_string(),
        'value': dbt.type_string(),
        'value_type': dbt.type_string(),
        'export_id': dbt.type_string(),
    }) }}

),

attribute_definitions as (

    {{ relation_or_empty(source('apsis', 'attributes'), {
        'section_id': dbt.type_string(),
        'attribute_id': dbt.type_string(),
        'name': dbt.type_string(),
        'type': dbt.type_string(),
    }) }}

),

sections as (

    {{ relation_or_empty(source('apsis', 'sections'), {
        'section_id': dbt.type_string(),
        'name': dbt.type_string(),
    }) }}

),

profiles as (

    select * from {{ ref('stg_apsis__profiles') }}

),

final as (

    select
        attribute_values.profile_key,
        attribute_values.section_id,
        sections.name as section_name,
        attribute_values.attribute_id,
        attribute_definitions.name as attribute_name,
        attribute_definitions.type as attribute_type,
        attribute_values.value,
        attribute_values.value_type,
        profiles.last_exported_at as exported_at
    from attribute_values
    inner join profiles
        on attribute_values.profile_key = profiles.profile_key
            and attribute_values.export_id = profiles.latest_export_id
    left join attribute_definitions
        on attribute_values.section_id = attribute_definitions.section_id
            and attribute_values.attribute_id = attribute_definitions.attribute_id
    left join sections
        on attribute_values.section_id = sections.section_id
    where attribute_values.value is not null

)

select * from final
